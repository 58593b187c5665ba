"""The ``rankdyna`` console script: thin argument parsing over the jobs and the exporter."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:  # the settings import torch-free, but the CLI loads nothing before a subcommand runs
    from .settings import CompressSettings


# The objectives' names, listed here so that `rankdyna --help` does not import torch (tested against the registry).
OBJECTIVE_NAMES = ("classification", "embedding-distillation", "causal-lm")


def _fraction_or_steps(text: str) -> float | int:
    value = float(text)
    return int(value) if value >= 1 and value.is_integer() and "." not in text else value


def _config_defaults() -> dict:
    """RankDynaConfig's field defaults: the CLI's defaults are the config's, never a copy of them."""
    import dataclasses

    from ..config import RankDynaConfig

    return {f.name: f.default for f in dataclasses.fields(RankDynaConfig)}


def _step_scale(text: str) -> str | float:
    return text if text == "matched" else float(text)


def _add_compress(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compress",
        help="fine-tune and compress a model on a GLUE task or your own files in one round",
        description="Fine-tune a pre-trained model on a GLUE task (or your own CSV/TSV/JSON-lines files), distil a "
        "sentence-embedding model, or train a causal LM on plain text, while RankDyna prunes its target matrices to "
        "a parameter budget; prints the dev metrics, parameter counts and wall time.",
    )
    parser.add_argument("--model", required=True, help="local folder of a pre-trained model (save_pretrained layout), "
                        "or a .gguf file (de-quantized to fp32 by transformers' loader)")
    parser.add_argument("--gguf-file", default=None, help="the .gguf file inside the --model folder to load")
    parser.add_argument("--task", default=None, help="GLUE task: mrpc, sst2, cola, stsb, rte, qnli, mnli, qqp "
                        "(or give your own --train-file and --validation-file)")
    parser.add_argument("--train-file", default=None, help="your own training data: .csv, .tsv or .jsonl")
    parser.add_argument("--validation-file", default=None, help="your own validation data, same columns")
    parser.add_argument("--text-columns", nargs="+", default=None, metavar="COLUMN",
                        help="one or two text columns (default: sentence1/sentence2, sentence, text, or the only "
                        "other columns, as transformers' run_glue.py infers them); with --texts, every column named")
    parser.add_argument("--objective", choices=list(OBJECTIVE_NAMES), default="classification",
                        help="classification (a labelled task, the default); embedding-distillation: compress a "
                        "sentence-embedding model on unlabelled --texts, the dense model as the teacher; causal-lm: "
                        "next-token prediction on the plain text of --texts, scored by validation perplexity")
    parser.add_argument("--texts", default=None, help="embedding-distillation: a .txt file (one text per line) or "
                        "a .csv/.tsv/.jsonl file (see --text-columns); causal-lm: a plain text file, packed into "
                        "blocks of --max-seq-length tokens")
    parser.add_argument("--validation-texts", default=None, help="embedding-distillation and causal-lm: text to check "
                        "the model on (default: the last 5%% of --texts, held out)")
    parser.add_argument("--label-column", default=None, help="label column (default: label); labels written as "
                        "floats (3.5) mean regression, any others are classes")
    parser.add_argument("--output", required=True, help="folder for results.json, the adapter and the history")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget", type=float, default=0.5,
                        help="fraction (0, 1] of the target matrices' parameters to keep (default 0.5)")
    budget.add_argument("--dense", action="store_true", help="plain dense fine-tuning instead (the reference)")
    parser.add_argument("--method", choices=["rankdyna", "svd", "fwsvd", "asvd", "svdllm"], default="rankdyna",
                        help="rankdyna (one round, the default); svd, fwsvd (Fisher-weighted rows), asvd (activation-"
                        "scaled inputs) or svdllm (whitened inputs): the baselines (dense fine-tuning where the "
                        "objective has a first round, truncation at one uniform rank, fine-tuning again)")
    parser.add_argument("--init-basis", choices=["svd", "whitened"], default=None,
                        help="rankdyna: factors start from the SVD of each weight (svd) or of the weight times SVD-LLM's "
                        "whitening of its inputs on --calibration-samples training examples (whitened); default: "
                        "whitened for --objective causal-lm and embedding-distillation (svd where --init-budget rules it "
                        "out), svd otherwise")
    parser.add_argument("--calibration-samples", type=int, default=128,
                        help="asvd/svdllm: how many training examples (the first batches the seeded Trainer draws) "
                        "calibrate the truncation (default 128)")
    parser.add_argument("--finetuned-model", default=None,
                        help="baselines only: skip the first round and start from this model, already fine-tuned "
                        "on the task with the same settings (the finetuned/ folder of a --dense run)")
    parser.add_argument("--glue-dir", default=None, help="GLUE root in the official TSV layout (default $GLUE_DIR)")
    parser.add_argument("--epochs", type=float, default=None,
                        help="training epochs (default: 6 for one RankDyna round, as many steps as the two rounds "
                        "of the baselines; 3 for --dense and each round of the baselines; --epochs 3 gives the "
                        "earlier RankDyna default)")
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps")
    parser.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default 5e-5)")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch size (default 16)")
    parser.add_argument("--max-seq-length", type=int, default=128, help="tokens per example (default 128)")
    parser.add_argument("--max-train-samples", type=int, default=None, help="use only the first N training rows")
    parser.add_argument("--max-eval-samples", type=int, default=None, help="use only the first N dev rows")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    defaults = _config_defaults()
    parser.add_argument("--tinit", type=_fraction_or_steps, default=defaults["tinit"],
                        help="warm-up at the initial budget: steps (int) or fraction of training (float < 1); "
                        f"default {defaults['tinit']}")
    parser.add_argument("--tfinal", type=_fraction_or_steps, default=defaults["tfinal"],
                        help=f"final frozen-mask phase: steps or fraction; default {defaults['tfinal']}")
    parser.add_argument("--delta-t", type=_fraction_or_steps, default=defaults["deltaT"],
                        help=f"mask refresh interval: steps or fraction; default {defaults['deltaT']}")
    parser.add_argument("--init-budget", type=float, default=None,
                        help="start below full rank at this fraction of the dense size (default: full rank)")
    parser.add_argument("--factor-step-scale", type=_step_scale, default=defaults["factor_step_scale"],
                        help="'matched' (default): Adam steps on the factors sized like dense ones; a number "
                        "scales them (1.0: plain Adam on the factors, the earlier behaviour)")
    parser.add_argument("--allocation", choices=["global", "per_matrix"], default="global",
                        help="global competition (the method) or the per_matrix ablation (same fraction everywhere)")
    parser.add_argument("--importance-updates", choices=["dynamic", "frozen"], default="dynamic",
                        help="re-estimate importance until the final phase (the method) or freeze it after warm-up")
    parser.add_argument("--rank-multiple", type=int, default=None,
                        help="round merged ranks down to multiples of this (e.g. 8) and re-spend the rest")
    _add_round_options(parser)
    _add_checkpoint_options(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=_run_compress)


def _add_round_options(parser: argparse.ArgumentParser) -> None:
    """The options of one training round beyond the schedule: phases borrowed from two rounds, the curve, the
    embedding-distillation loss."""
    parser.add_argument("--final-lr-restart", action="store_true",
                        help="RankDyna: warm the learning rate up and decay it again over the final phase, as a "
                        "second round would")
    parser.add_argument("--self-distill-weight", type=float, default=0.0,
                        help="RankDyna: distil from the model's own frozen state at the end of the warm-up, with "
                        "this weight (default 0: off)")
    parser.add_argument("--eval-steps", type=int, default=None,
                        help="score the model being trained every N optimizer steps (results.json 'curve', curve.png)")
    distill = parser.add_argument_group("embedding distillation")
    distill.add_argument("--distill-loss", choices=["mse", "cosine", "mse+cosine"], default="mse",
                         help="loss on the pooled embeddings (default mse, sentence-transformers' MSELoss)")
    distill.add_argument("--token-loss-weight", type=float, default=0.0,
                         help="also match the teacher's last hidden states at every token, with this weight "
                         "(default 0: off; the teacher then runs beside the student)")


def _add_checkpoint_options(parser: argparse.ArgumentParser) -> None:
    """Checkpoints of a long run, and continuing one that was killed."""
    group = parser.add_argument_group("checkpoints (one training round: dense, rankdyna, or a baseline given "
                                      "--finetuned-model or without a first round; no --self-distill-weight; "
                                      "removed once the results are written)")
    group.add_argument("--save-steps", type=int, default=None,
                       help="write a crash-safe checkpoint into --output every N optimizer steps (default: none)")
    group.add_argument("--save-total-limit", type=int, default=2,
                       help="keep only the last N checkpoints (default 2)")
    group.add_argument("--resume", action="store_true",
                       help="continue the run in --output from its last complete checkpoint (same settings only)")


def _run_compress(args: argparse.Namespace) -> None:
    from .results import format_results
    from .runner import compress

    print(format_results(compress(compress_settings(args))))


def compress_settings(args: argparse.Namespace) -> CompressSettings:
    """The settings a parsed ``rankdyna compress`` command line runs with: its defaults resolved but for the
    length, ``epochs=None`` without ``--epochs``, which the job resolves (:mod:`peft_rankdyna.jobs.length`)."""
    from .settings import CompressSettings

    return CompressSettings(
        model=args.model,
        task=args.task,
        output_dir=args.output,
        budget=None if args.dense else args.budget,
        method=args.method,
        epochs=args.epochs,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        max_seq_length=args.max_seq_length,
        seed=args.seed,
        max_steps=args.max_steps,
        max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples,
        glue_dir=args.glue_dir,
        finetuned_model=args.finetuned_model,
        train_file=args.train_file,
        validation_file=args.validation_file,
        text_columns=args.text_columns,
        label_column=args.label_column,
        objective=args.objective,
        texts=args.texts,
        validation_texts=args.validation_texts,
        gguf_file=args.gguf_file,
        calibration_samples=args.calibration_samples, init_basis=args.init_basis,
        distill_loss=args.distill_loss, token_loss_weight=args.token_loss_weight, eval_steps=args.eval_steps,
        final_lr_restart=args.final_lr_restart, self_distill_weight=args.self_distill_weight,
        rankdyna={"tinit": args.tinit, "tfinal": args.tfinal, "deltaT": args.delta_t, "init_budget": args.init_budget,
                  "rank_multiple": args.rank_multiple, "allocation": args.allocation,
                  "importance_updates": args.importance_updates, "factor_step_scale": args.factor_step_scale},
        show_progress=not args.no_progress,
        save_steps=args.save_steps, save_total_limit=args.save_total_limit, resume=args.resume,
    )


def _add_report(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="parameters, FLOPs, size and rank table of a model folder",
        description="Report parameters of the target matrices and of the whole model, FLOPs per token of the "
        "linear layers and of attention, weights size on disk and the per-matrix rank table, for a compact folder, "
        "a RankDyna adapter folder or a dense transformers model folder.",
    )
    parser.add_argument("directory", help="compact model, RankDyna adapter or dense model folder")
    parser.add_argument("--seq-len", type=int, default=128, help="sequence length for attention FLOPs (default 128)")
    parser.add_argument("--json", default=None, help="also write the report as JSON to this file")
    parser.set_defaults(run=_run_report)


def _run_report(args: argparse.Namespace) -> None:
    import json

    from ..io import atomic_write_text
    from .report import format_report, report_folder

    report = report_folder(args.directory, args.seq_len)
    print(format_report(report))
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=1))


def _add_merge(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="merge a saved RankDyna adapter into a compact model folder",
        description="Load a saved RankDyna adapter on its base model, merge it into truncated factors and save the "
        "compact model with the base model's tokenizer.",
    )
    parser.add_argument("adapter", help="RankDyna adapter folder (save_pretrained of the PEFT model)")
    parser.add_argument("output", help="compact model folder to write")
    parser.add_argument("--base-model", default=None, help="base model folder (default: the one the adapter records)")
    parser.set_defaults(run=_run_merge)


def _run_merge(args: argparse.Namespace) -> None:
    from peft import PeftConfig

    from ..loading import load_tokenizer, merge_adapter

    base = args.base_model or PeftConfig.from_pretrained(args.adapter).base_model_name_or_path
    merge_adapter(args.adapter, base).save_pretrained(args.output, tokenizer=load_tokenizer(base))
    print(f"compact model written to {args.output}")


def _add_trim_vocab(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "trim-vocab",
        help="keep only the word embeddings of the tokens a task's text uses (a smaller deployed model)",
        description="Cut a compact folder's vocabulary to the tokens its tokenizer produces on the task's training "
        "text (plus the special tokens): the word-embedding rows of the rest are dropped and the tokenizer is "
        "rewritten to the kept vocabulary (WordPiece tokenizers only). The training text is tokenized exactly as "
        "before; unseen words may split differently or become [UNK], so score the result with "
        "`rankdyna evaluate`. Writes vocabulary.json with the counts.",
    )
    parser.add_argument("directory", help="compact model folder with its tokenizer")
    parser.add_argument("output", help="compact model folder to write")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", help="GLUE task whose training text decides the vocabulary")
    source.add_argument("--texts", help="a .txt file (one text per line) or a CSV/TSV/JSON-lines file")
    parser.add_argument("--text-columns", nargs="+", default=None, help="columns of --texts holding the text")
    parser.add_argument("--glue-dir", default=None, help="GLUE root for --task (default $GLUE_DIR)")
    parser.set_defaults(run=_run_trim_vocab)


def _run_trim_vocab(args: argparse.Namespace) -> None:
    import json
    import os

    from ..compact import AutoCompactModel
    from ..loading import load_tokenizer, require_model_folder
    from ..pooling import copy_pooling_files
    from .vocab import trim_vocabulary

    require_model_folder(args.directory)
    if args.task:
        from .data.glue import get_task, load_glue

        texts = [text for column in load_glue(get_task(args.task), "train", args.glue_dir).texts for text in column]
    else:
        from .data.files import read_texts

        texts = read_texts(args.texts, args.text_columns)
    model, tokenizer = AutoCompactModel.from_pretrained(args.directory), load_tokenizer(args.directory)
    tokenizer, stats = trim_vocabulary(model, tokenizer, texts)
    stats["texts"] = {"task": args.task, "file": args.texts, "count": len(texts)}

    def extra_files(folder: str) -> None:
        copy_pooling_files(args.directory, folder)
        with open(os.path.join(folder, "vocabulary.json"), "w", encoding="utf-8") as handle:
            json.dump(stats, handle, indent=1)

    model.save_pretrained(args.output, tokenizer=tokenizer, extra_files=extra_files)
    print(f"vocabulary {stats['vocab_before']:,} -> {stats['vocab_after']:,} tokens, word embeddings "
          f"{stats['embedding_params_before']:,} -> {stats['embedding_params_after']:,} parameters; "
          f"written to {args.output}")


def _add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="GLUE dev metrics of a compact or dense model folder",
        description="Score a saved model folder (compact or dense, tokenizer beside it) on a GLUE task's dev split.",
    )
    parser.add_argument("directory", help="compact or dense model folder with its tokenizer")
    parser.add_argument("--task", required=True, help="GLUE task name")
    parser.add_argument("--glue-dir", default=None, help="GLUE root in the official TSV layout (default $GLUE_DIR)")
    parser.add_argument("--max-seq-length", type=int, default=128, help="tokens per example (default 128)")
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> None:
    from ..loading import load_folder, load_tokenizer
    from .data.glue import get_task, load_glue
    from .objectives.classification import evaluate

    task = get_task(args.task)
    metrics = evaluate(load_folder(args.directory), load_tokenizer(args.directory), task,
                       load_glue(task, "dev", args.glue_dir), args.max_seq_length)
    print("  ".join(f"{name} {value:.4f}" for name, value in metrics.items()))


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a compact folder to ONNX (portable and fused graphs, optionally fp16 and int8), validated",
        description="Export a compact model folder with Optimum: model.onnx (portable), model_fused.onnx (one fused "
        "attention op per layer over the low-rank projections) and model_fused_ort.onnx (plus onnxruntime's "
        "LayerNorm/Gelu fusions); --fp16 adds model_fused_fp16.onnx for GPUs, --int8 model_fused_int8.onnx for "
        "CPUs. Every fp32 graph is checked against PyTorch on real tokenised text (max |diff| <= 1e-4), every "
        "reduced-precision graph against its fp32 graph, and the export fails, naming the output, if not. A causal "
        "LM exports Optimum's text-generation-with-past graph (model.onnx, loadable by ORTModelForCausalLM), "
        "checked in prefill and decoding against PyTorch (max |diff| <= 1e-3), and with --int8 model_int8.onnx "
        "(8-bit weights).",
    )
    parser.add_argument("directory", help="compact model folder (rankdyna compress/merge output)")
    parser.add_argument("output", help="folder for the ONNX graphs, config, tokenizer and rankdyna_export.json")
    parser.add_argument("--task", default=None, help="Optimum task (default: inferred from the model class; a causal "
                        "LM's is text-generation-with-past)")
    parser.add_argument("--fp16", action="store_true", help="also write the half-precision GPU graph")
    parser.add_argument("--fp16-check-task", default=None,
                        help="GLUE task whose dev set the fp16 graph is checked on (default: built-in sentence pairs)")
    parser.add_argument("--int8", action="store_true",
                        help="also write the dynamically quantized CPU graph (through Optimum's ORTQuantizer)")
    parser.add_argument("--int8-check-task", default=None,
                        help="GLUE task whose dev set the int8 graph is checked on (default: built-in sentence pairs)")
    parser.add_argument("--int8-keep-embeddings", action="store_true",
                        help="leave the embedding tables in fp32 (default: 8-bit, about 4x smaller)")
    parser.add_argument("--int8-per-tensor", action="store_true",
                        help="one weight scale per matrix instead of one per output channel")
    parser.add_argument("--int8-min-rank", type=int, default=0,
                        help="keep weight products with a side shorter than this (narrow factors) in fp32 (default 0: "
                        "quantize all)")
    parser.add_argument("--int8-min-agreement", type=float, default=None,
                        help="share of examples on which the int8 graph must predict the fp32 graph's class "
                        "(default 0.95); for a causal LM, the share of real positions at which it must predict the "
                        "fp32 graph's next token (default 0.80)")
    parser.add_argument("--glue-dir", default=None, help="GLUE root for the check tasks (default $GLUE_DIR)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: Optimum's for the model)")
    parser.set_defaults(run=_run_export)


def _dev_examples(task_name: Optional[str], glue_dir: Optional[str]) -> Optional[list[tuple[str, Optional[str]]]]:
    """A GLUE task's dev texts as (text, second text or None) pairs; None without a task."""
    if not task_name:
        return None
    from .data.glue import get_task, load_glue

    columns = load_glue(get_task(task_name), "dev", glue_dir).texts
    return list(zip(columns[0], columns[1] if len(columns) > 1 else [None] * len(columns[0])))


def _run_export(args: argparse.Namespace) -> None:
    from rankdyna_exporters.export import export
    from rankdyna_exporters.int8 import Int8Options

    int8_shaped = (args.int8_check_task or args.int8_keep_embeddings or args.int8_per_tensor or args.int8_min_rank
                   or args.int8_min_agreement is not None)
    for flag, used in (("fp16", args.fp16_check_task), ("int8", int8_shaped)):
        if used and not getattr(args, flag):
            raise ValueError(f"The --{flag}-* options shape the {flag} graph; add --{flag} to write it.")
    fp16_examples = _dev_examples(args.fp16_check_task, args.glue_dir)
    int8_examples = _dev_examples(args.int8_check_task, args.glue_dir)
    options = Int8Options(embeddings=not args.int8_keep_embeddings, per_channel=not args.int8_per_tensor,
                          min_rank=args.int8_min_rank,
                          **({} if args.int8_min_agreement is None else {"min_agreement": args.int8_min_agreement}))
    _log_progress()
    report = export(args.directory, args.output, task=args.task, fp16=args.fp16, fp16_examples=fp16_examples,
                    opset=args.opset, int8=args.int8, int8_examples=int8_examples, int8_options=options)
    for variant in report["variants"].values():
        print(f"{variant['file']:24s} {variant['description']}")
        check = variant.get("against_fp32")
        if check is not None and "positions" in check:  # a causal LM's int8 graph: next tokens
            print(f"{'':24s} picks the fp32 graph's next token at {check['agreement']:.2%} of {check['positions']} "
                  "real positions")
        elif check is not None:
            shown = "n/a" if check["agreement"] is None else f"{check['agreement']:.2%}"
            print(f"{'':24s} agrees with fp32 on {shown} of {check['examples']} examples ({check['examples_from']})")
    print(f"written to {args.output} (details in rankdyna_export.json)")


def _add_bench(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="latency of the exported graphs against the dense model (PyTorch and ONNX)",
        description="Time PyTorch eager dense, the dense ONNX graph (raw Optimum export and its onnxruntime-"
        "optimized form) and every graph of each export folder on one execution provider: a fresh process per "
        "variant, shuffled rounds, medians and p90 over all timed runs. Writes OUT.json and OUT.md. Causal-LM "
        "exports are timed in two phases: prefill of --seq-lens prompt tokens, and one decoding step with that many "
        "tokens in the cache, against Optimum's export of the dense model (fp32 and 8-bit weights).",
    )
    parser.add_argument("exports", nargs="+", help="folders written by `rankdyna export`")
    parser.add_argument("--dense-model", required=True, help="dense model folder to compare with (e.g. the base model; "
                        "for causal LMs also a .gguf file)")
    parser.add_argument("--out", required=True, help="results path without extension (.json and .md are written)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help="default 1 8 32 (encoders), 1 8 (causal LMs)")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[128])
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each in a new shuffled order (default 3)")
    parser.add_argument("--runs-per-round", type=int, default=10, help="timed runs per shape per round (default 10)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs per shape first (default 5)")
    parser.add_argument("--provider", choices=["cpu", "cuda"], default=None,
                        help="execution provider (default: CUDA when available, else CPU)")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (default: one per CPU core)")
    parser.add_argument("--work-dir", default="runs/bench", help="cache of the dense graphs (default runs/bench)")
    parser.add_argument("--choose", type=int, nargs=2, default=None, metavar=("BATCH", "SEQ"),
                        help="record each export's fastest graph at this shape for the provider in its "
                        "rankdyna_export.json")
    parser.set_defaults(run=_run_bench)


def _run_bench(args: argparse.Namespace) -> None:
    from rankdyna_exporters.bench import BenchSettings, benchmark
    from rankdyna_exporters.bench_decoder import benchmark_decoder, is_decoder_export
    from rankdyna_exporters.runtime import choose_provider

    from ..io import portable_command

    _log_progress()
    if args.choose and (args.choose[0] not in (args.batch_sizes or [1, 8, 32]) or args.choose[1] not in args.seq_lens):
        raise ValueError(f"--choose {args.choose[0]} {args.choose[1]} is not among the timed shapes.")
    decoder = is_decoder_export(args.exports[0])
    if any(is_decoder_export(folder) != decoder for folder in args.exports[1:]):
        raise ValueError("Give causal-LM exports or encoder exports, not both: they are timed differently.")
    if args.choose and decoder:
        raise ValueError("--choose picks among an encoder export's graphs; a causal LM's has one per precision.")
    batch_sizes = args.batch_sizes or ([1, 8] if decoder else [1, 8, 32])
    settings = BenchSettings(batch_sizes=tuple(batch_sizes), seq_lens=tuple(args.seq_lens), rounds=args.rounds,
                             runs_per_round=args.runs_per_round, warmup=args.warmup,
                             provider=choose_provider(args.provider), threads=args.threads)
    command = "rankdyna " + portable_command(args.argv, {args.dense_model: "$MODEL"})
    if decoder:
        benchmark_decoder(args.exports, args.dense_model, settings, args.out, command, args.work_dir)
        with open(args.out + ".md", encoding="utf-8") as handle:
            print(handle.read())
        return
    results = benchmark(args.exports, args.dense_model, settings, args.out, command, args.work_dir,
                        tuple(args.choose) if args.choose else None)
    with open(args.out + ".md", encoding="utf-8") as handle:
        print(handle.read())
    for label, choice in results["chosen"].items():
        print(f"{label}: chose {choice['variant']} ({choice['why']})")


def _log_progress() -> None:
    import logging

    logging.basicConfig(format="%(message)s")
    logging.getLogger("rankdyna_exporters").setLevel(logging.INFO)


def build_parser() -> argparse.ArgumentParser:
    """The ``rankdyna`` argument parser with all subcommands."""
    parser = argparse.ArgumentParser(prog="rankdyna", description="RankDyna: compress a Transformer in one round.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_compress(subparsers)
    _add_report(subparsers)
    _add_merge(subparsers)
    _add_evaluate(subparsers)
    _add_trim_vocab(subparsers)
    _add_export(subparsers)
    _add_bench(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the console script; bad input ends with one clear line and exit code 2."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # results record the exact command
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"rankdyna {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
