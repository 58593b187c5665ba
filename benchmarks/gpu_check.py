"""Everything the compact graph must show on a GPU, in one run: correctness, latency, training cost.

    python benchmarks/gpu_check.py --out $OUT                 # on a machine with onnxruntime-gpu and CUDA
    python benchmarks/gpu_check.py --out /tmp/dry --dry-run   # the same code paths on the CPU, tiny, in seconds

Weights do not travel: the dense model is MiniLM-L6's shape (BertForSequenceClassification, 6 × 384,
random weights), and each compact model is its truncation to the ranks of a committed run
(``benchmarks/results/rank_patterns/*.json``: per matrix, the rank RankDyna kept); latency does not
depend on weight values. Steps, each recorded in ``OUT/summary.json`` (a failed step is recorded
with its error and the run goes on):

1. ``correctness``: every graph of every export (portable, fused, fused_ort, fp16) run on the
   execution provider and compared with PyTorch on real tokenised text: fp32 graphs within
   ``--atol`` (TF32 and fused kernels round differently from the CPU), the fp16 graph's class
   agreement with fp32; plus a tiny MPNet, whose fused attention carries the relative-position bias.
2. ``latency``: ``rankdyna bench`` on the provider (IO binding on CUDA) at batch 1, 8, 32, 128 × 128:
   PyTorch eager dense (fp32, fp16, compiled), the dense ONNX graphs (raw, ort-optimized, fp16 with
   the BERT Attention fusion: the reference), every compact graph and the compact models in PyTorch
   fp16 → ``OUT/latency.{md,json}``.
3. ``profile``: onnxruntime's per-op-type times of the dense fp16 reference and the compact fused
   fp16 graphs at batch 1 and 32.
4. ``train_step``: ``benchmarks/train_step.py`` on the device (dense, RankDyna full rank, half and
   quarter kept) → ``OUT/train_step.{md,json}``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
PATTERNS = os.path.join(HERE, "results", "rank_patterns")
MINILM_SHAPE = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                    intermediate_size=1536, max_position_embeddings=512)
TINY_SHAPE = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                  max_position_embeddings=64)


def word_tokenizer(folder: str) -> Any:
    """A small WordPiece tokenizer (letters, digits, a few words): its ids fit any BERT vocabulary."""
    from transformers import BertTokenizerFast

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters), *"0123456789",
             ".", ",", "'", "-", "the", "is", "of", "to", "in", "and"]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.txt"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=os.path.join(folder, "vocab.txt"))
    tokenizer.save_pretrained(folder)
    return tokenizer


def dense_model(shape: dict[str, int], model_type: str = "bert") -> torch.nn.Module:
    """A randomly initialised sequence classifier of the given shape (seed 0)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(AutoConfig.for_model(model_type, **shape)).eval()


def truncated(model: torch.nn.Module, ranks: dict[str, int]) -> torch.nn.Module:
    """``model`` with every matrix in ``ranks`` truncated to that rank (its top singular groups), as compact."""
    import copy

    from peft_rankdyna.compact import make_compact, truncate
    from peft_rankdyna.layer import svd_factors

    compact = copy.deepcopy(model)
    for name, rank in ranks.items():
        linear = compact.get_submodule(name)
        U, s, Vt = svd_factors(linear.weight, min(linear.weight.shape))
        parent, _, child = name.rpartition(".")
        keep = torch.arange(len(s)) < rank
        setattr(compact.get_submodule(parent), child, truncate(U, s, Vt, keep, linear.bias.detach()))
    return make_compact(compact, ranks).eval()


def rank_patterns(dry_run: bool, model: torch.nn.Module) -> dict[str, dict[str, int]]:
    """The rank patterns to build compact models from: the committed ones, or (dry run) half and a quarter."""
    from peft_rankdyna.targets import default_target_names

    if dry_run:
        names = default_target_names(model)
        full = {n: min(model.get_submodule(n).weight.shape) for n in names}
        return {"half": {n: r // 2 for n, r in full.items()}}
    patterns = {}
    for path in sorted(glob.glob(os.path.join(PATTERNS, "*.json"))):
        with open(path, encoding="utf-8") as handle:
            patterns[os.path.splitext(os.path.basename(path))[0]] = json.load(handle)["ranks"]
    if not patterns:
        raise FileNotFoundError(f"No rank patterns in {PATTERNS}.")
    return patterns


def check_graphs(export_dir: str, model: torch.nn.Module, tokenizer: Any, provider: str, atol: float
                 ) -> dict[str, Any]:
    """Every fp32 graph of ``export_dir`` on ``provider`` against PyTorch; the fp16 agreement the export measured."""
    from rankdyna_exporters.layout import FILE_NAMES, FP16, read_export_report
    from rankdyna_exporters.runtime import create_session
    from rankdyna_exporters.validation import max_differences

    report = read_export_report(export_dir)
    checked: dict[str, Any] = {}
    for variant in report["variants"]:
        if variant == FP16:
            checked[variant] = report["variants"][FP16]["against_fp32"]
            continue
        session = create_session(os.path.join(export_dir, FILE_NAMES[variant]), provider)
        differences = max_differences(session, model, tokenizer)
        checked[variant] = {"providers": session.get_providers(), "max_abs_diff": differences,
                            "within_atol": all(d <= atol for d in differences.values())}
    return checked


def run_steps(steps: list[tuple[str, Callable[[], Any]]], summary: dict[str, Any], out: str) -> None:
    """Run each step, recording its result (or its error) and its seconds; the summary is rewritten after each."""
    for name, step in steps:
        start = time.perf_counter()
        print(f"=== {name}", flush=True)
        try:
            summary["steps"][name] = {"result": step(), "ok": True}
        except Exception as error:  # noqa: BLE001 - a failed step is recorded; the run goes on to the next
            summary["steps"][name] = {"ok": False, "error": f"{type(error).__name__}: {error}",
                                      "traceback": traceback.format_exc()[-3000:]}
            print(f"    failed: {type(error).__name__}: {error}", flush=True)
        summary["steps"][name]["seconds"] = round(time.perf_counter() - start, 1)
        with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=1, default=str)


@dataclass
class Run:
    """What every step works on: the arguments, the provider, the models and their folders."""

    args: argparse.Namespace
    provider: str
    out: str
    work: str
    tokenizer: Any
    dense_dir: str
    compacts: dict[str, torch.nn.Module]
    compact_dirs: dict[str, str]
    export_dirs: dict[str, str]
    command: str


def prepare(args: argparse.Namespace, provider: str, command: str) -> Run:
    """Build the dense model and the compact ones from the rank patterns, and save them with a tokenizer."""
    out = os.path.abspath(args.out)
    work = os.path.join(out, "work")
    os.makedirs(work, exist_ok=True)
    tokenizer = word_tokenizer(os.path.join(work, "tokenizer"))
    dense = dense_model(TINY_SHAPE if args.dry_run else MINILM_SHAPE)
    dense_dir = os.path.join(work, "dense")
    dense.save_pretrained(dense_dir)
    tokenizer.save_pretrained(dense_dir)
    compacts = {name: truncated(dense, ranks) for name, ranks in rank_patterns(args.dry_run, dense).items()}
    run = Run(args, provider, out, work, tokenizer, dense_dir, compacts,
              {name: os.path.join(work, f"compact-{name}") for name in compacts},
              {name: os.path.join(work, f"onnx-{name}") for name in compacts}, command)
    for name, model in compacts.items():
        model.save_pretrained(run.compact_dirs[name], tokenizer=tokenizer)
    return run


def step_export(run: Run) -> dict[str, Any]:
    """Every export with its fp16 graph (validated on the CPU provider as `rankdyna export` does)."""
    from rankdyna_exporters.export import export
    from rankdyna_exporters.layout import FP16

    return {name: export(model, run.export_dirs[name], tokenizer=run.tokenizer, fp16=True)["variants"][FP16]
            ["against_fp32"] for name, model in run.compacts.items()}


def step_correctness(run: Run) -> dict[str, Any]:
    """Every graph on the provider against PyTorch, and a tiny MPNet (its fused attention carries a bias)."""
    from peft_rankdyna.baselines import factor_model
    from rankdyna_exporters.export import export

    checked = {name: check_graphs(run.export_dirs[name], model, run.tokenizer, run.provider, run.args.atol)
               for name, model in run.compacts.items()}
    mpnet = factor_model(dense_model(TINY_SHAPE, "mpnet"), 0.5)
    export(mpnet, os.path.join(run.work, "onnx-mpnet"), tokenizer=run.tokenizer)
    checked["tiny mpnet"] = check_graphs(os.path.join(run.work, "onnx-mpnet"), mpnet, run.tokenizer, run.provider,
                                         run.args.atol)
    return checked


def step_latency(run: Run) -> dict[str, Any]:
    """``rankdyna bench`` on the provider: dense references, every compact graph, the compact models in PyTorch."""
    from rankdyna_exporters.bench import BenchSettings, benchmark

    dry = run.args.dry_run
    settings = BenchSettings(batch_sizes=(1, 2) if dry else (1, 8, 32, 128), seq_lens=(16,) if dry else (128,),
                             rounds=1 if dry else run.args.rounds, runs_per_round=2 if dry else run.args.runs,
                             warmup=1 if dry else 5, provider=run.provider, threads=0)
    names = list(run.compacts)
    results = benchmark([run.export_dirs[n] for n in names], run.dense_dir, settings, os.path.join(run.out, "latency"),
                        run.command, os.path.join(run.work, "bench"),
                        choose_shape=(settings.batch_sizes[0], settings.seq_lens[0]),
                        compact_dirs=[run.compact_dirs[n] for n in names])
    return {"chosen": results["chosen"], "failed": results["failed"], "rows": len(results["rows"])}


def step_profile(run: Run) -> dict[str, Any]:
    """onnxruntime's per-op-type times of the dense reference and the compact fp16 (dry run: fused) graphs."""
    sys.path.insert(0, HERE)
    from profile_ops import profile

    from rankdyna_exporters.layout import FILE_NAMES, FP16, FUSED_ORT

    dry = run.args.dry_run
    bench = os.path.join(run.work, "bench", "dense-*")
    graphs = {"dense": (glob.glob(os.path.join(bench, "model_ort_fp16.onnx")) or
                        glob.glob(os.path.join(bench, "model_ort.onnx")))[0]}
    graphs.update({name: os.path.join(folder, FILE_NAMES[FUSED_ORT if dry else FP16])
                   for name, folder in run.export_dirs.items()})
    return {f"{name} batch {batch}": profile(path, run.dense_dir, batch, 16 if dry else 128, 2 if dry else 20,
                                              os.cpu_count() or 1, run.provider)
            for name, path in graphs.items() for batch in ((1, 2) if dry else (1, 32))}


def step_train(run: Run) -> str:
    """``benchmarks/train_step.py`` on the device: dense, full rank, half and a quarter kept."""
    sys.path.insert(0, HERE)
    import train_step

    sizes = (["--kept", "1.0", "0.5", "--batch-size", "2", "--seq-len", "8", "--steps", "1", "--rounds", "1"]
             if run.args.dry_run else ["--kept", "1.0", "0.5", "0.25", "--rounds", "3", "--steps", "5"])
    return train_step.main(["--model", run.dense_dir, "--out", os.path.join(run.out, "train_step"), "--device",
                            "cpu" if run.args.dry_run else "cuda", *sizes])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for every result file")
    parser.add_argument("--dry-run", action="store_true", help="tiny models on the CPU provider: the same code paths")
    parser.add_argument("--atol", type=float, default=1e-3, help="fp32 tolerance on the device (default 1e-3)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per shape, variant and round")
    args = parser.parse_args(argv)

    import onnxruntime

    from peft_rankdyna.io import portable_command

    provider = "CPUExecutionProvider" if args.dry_run else "CUDAExecutionProvider"
    if provider not in onnxruntime.get_available_providers():
        raise SystemExit(f"onnxruntime {onnxruntime.__version__} has no {provider} here "
                         f"(providers: {onnxruntime.get_available_providers()}); use --dry-run on a CPU machine.")
    # onnxruntime-gpu loads cuBLAS/cuDNN when its first CUDA session starts; torch, imported above, has
    # loaded its own, and preload_dlls() (onnxruntime ≥ 1.21) also looks in the nvidia-* pip packages.
    preloaded = not args.dry_run and hasattr(onnxruntime, "preload_dlls")
    if preloaded:
        onnxruntime.preload_dlls()
    command = "python benchmarks/gpu_check.py " + portable_command(sys.argv[1:] if argv is None else argv,
                                                                    {args.out: "$OUT"})
    run = prepare(args, provider, command)
    summary: dict[str, Any] = {
        "command": command, "provider": provider, "onnxruntime": onnxruntime.__version__,
        "providers": onnxruntime.get_available_providers(), "preload_dlls": preloaded, "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "shape": TINY_SHAPE if args.dry_run else MINILM_SHAPE, "patterns": list(run.compacts), "steps": {}}
    run_steps([("export", lambda: step_export(run)), ("correctness", lambda: step_correctness(run)),
               ("latency", lambda: step_latency(run)), ("profile", lambda: step_profile(run)),
               ("train_step", lambda: step_train(run))], summary, run.out)
    print(json.dumps({name: step.get("ok") for name, step in summary["steps"].items()}))
    return summary


if __name__ == "__main__":
    main()
