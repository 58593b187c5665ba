"""Compressed sentence-embedding models, judged the way embedding users judge them.

    python benchmarks/embedding_texts.py --glue-dir $GLUE_DIR --wikitext $WIKI --out $TEXTS
    python benchmarks/embeddings.py --model $MODEL --texts $TEXTS --glue-dir $GLUE_DIR --out benchmarks/results/embeddings \\
        --work-dir $WORK_DIR [--setting "NAME=compress flags" ...]

Every compressed model is one ``rankdyna compress --objective embedding-distillation`` run in its
own process (skipped when its folder already holds results, so the benchmark resumes), distilled on
``$TEXTS/train.txt`` and scored on ``$TEXTS/validation.txt`` while it trains (``--eval-steps``:
the curve of cosine to the teacher against steps) and at its end: the validation figures are what
options are chosen on. Each ``--setting`` is one set of compress options (the objective and
schedule levers), its runs in their own folders, its rows in the table: settings are compared on
the same seed and text, never merged. Then every model, the dense teacher included, is scored on
text it never saw, ``$TEXTS/pool.txt``:

- mean and 5th-percentile cosine to the teacher's embeddings;
- recall@10 against the teacher: in the student's own index, and with the student's queries
  against the teacher's documents (the mixed index: can it serve an index the teacher built);
- the MRPC dev pair AUC of the embeddings' cosine, and linear probes (logistic regression on the
  frozen embeddings of ``--probe-samples`` training sentences) on SST-2 (accuracy) and CoLA
  (Matthews) dev;
- the cosine on a seeded sample of the training text (under- or over-fitting);
- that ``SentenceTransformer(folder)`` encodes as our pipeline does (the largest difference).

Writes ``OUT.json``, ``OUT.md`` (with the commands) and ``OUT.png`` (the curves).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

RUNS = [("rankdyna", 0.5), ("rankdyna", 0.25), ("svd", 0.5), ("svd", 0.25)]
LABELS = {"rankdyna": "RankDyna", "svd": "uniform SVD"}
FIT_TEXTS = 1000  # training sentences (a seeded sample) the fit to the teacher is also measured on
PROBES = {"sst2": "accuracy", "cola": "matthews"}
ST_CHECK_TEXTS = 64  # pool sentences SentenceTransformer encodes for the loading check


def parse_setting(text: str) -> tuple[str, list[str]]:
    """``"NAME=flags"`` (flags of ``rankdyna compress``, shell-quoted) → (name, flags); ``"NAME"`` has none."""
    name, _, flags = text.partition("=")
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise argparse.ArgumentTypeError(f"a setting is NAME=FLAGS with a plain NAME, got {text!r}")
    return name, shlex.split(flags)


def distill_command(args: argparse.Namespace, setting: tuple[str, list[str]], method: str, budget: float) -> list[str]:
    """The ``rankdyna compress`` command of one compressed model."""
    name, flags = setting
    return ["rankdyna", "compress", "--model", args.model, "--objective", "embedding-distillation", "--texts",
            os.path.join(args.texts, "train.txt"), "--validation-texts", os.path.join(args.texts, "validation.txt"),
            "--method", method, "--budget", f"{budget:g}",
            "--seed", str(args.seed), "--epochs", f"{args.epochs:g}", "--lr", f"{args.lr:g}",
            "--max-seq-length", str(args.max_seq_length), "--eval-steps", str(args.eval_steps),
            "--output", os.path.join(args.work_dir, name, f"{method}-{budget:g}"), "--no-progress",
            *(["--max-train-samples", str(args.max_train_samples)] if args.max_train_samples else []),
            *(["--save-steps", str(args.save_steps)] if args.save_steps else []), *flags]


@dataclass
class Evaluation:
    """The texts every model is scored on, and the teacher's embeddings of them."""

    pool: list[str]
    teacher_pool: torch.Tensor
    mrpc: tuple[list[str], list[str], list[int]]
    probes: dict[str, tuple[list[str], list[int], list[str], list[int]]]
    fit: list[str]
    teacher_fit: torch.Tensor


def fit_sample(train_path: str, count: int = FIT_TEXTS) -> list[str]:
    """A seeded sample of the distillation's own training sentences."""
    from peft_rankdyna.jobs.data.files import read_texts

    texts = read_texts(train_path)
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(0))[:count]
    return [texts[i] for i in sorted(order.tolist())]


def evaluation(args: argparse.Namespace, encode: Any) -> Evaluation:
    """The pool, MRPC dev pairs, probe data and fit sample; ``encode(texts)`` gives the teacher's embeddings."""
    from peft_rankdyna.jobs.data.files import read_texts
    from peft_rankdyna.jobs.data.glue import get_task, load_glue

    def split(task: str, name: str, limit: Optional[int] = None) -> tuple[list[str], list[int]]:
        data = load_glue(get_task(task), name, args.glue_dir)
        return data.texts[0][:limit], [int(label) for label in data.labels[:limit]]

    mrpc = load_glue(get_task("mrpc"), "dev", args.glue_dir)
    pool, fit = read_texts(os.path.join(args.texts, "pool.txt")), fit_sample(os.path.join(args.texts, "train.txt"))
    probes = {task: (*split(task, "train", args.probe_samples), *split(task, "dev")) for task in PROBES}
    return Evaluation(pool, encode(pool), (*mrpc.texts, [int(label) for label in mrpc.labels]), probes, fit,
                      encode(fit))


def linear_probe(train: torch.Tensor, train_labels: list[int], dev: torch.Tensor, dev_labels: list[int],
                 metric: str) -> float:
    """Logistic regression on frozen embeddings, trained on ``train``, scored on ``dev`` (accuracy or Matthews)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, matthews_corrcoef

    predicted = LogisticRegression(max_iter=2000).fit(train.numpy(), train_labels).predict(dev.numpy())
    return float(accuracy_score(dev_labels, predicted) if metric == "accuracy" else
                 matthews_corrcoef(dev_labels, predicted))


def score(encode: Any, data: Evaluation) -> dict[str, float]:
    """Every measure of one model (``encode(texts)`` → its embeddings) against the teacher's."""
    from sklearn.metrics import roc_auc_score

    from peft_rankdyna.jobs.embedding_metrics import cosine_report, index_report

    pool = encode(data.pool)
    first, second, labels = data.mrpc
    pairs = F.cosine_similarity(encode(first), encode(second), dim=-1).numpy()
    scores = {**cosine_report(pool, data.teacher_pool), **index_report(pool, data.teacher_pool, 10),
              "mrpc_auc": float(roc_auc_score(labels, pairs)),
              "train_mean_cosine": cosine_report(encode(data.fit), data.teacher_fit)["mean_cosine"]}
    for task, (train_texts, train_labels, dev_texts, dev_labels) in data.probes.items():
        scores[f"{task}_probe"] = linear_probe(encode(train_texts), train_labels, encode(dev_texts), dev_labels,
                                               PROBES[task])
    return scores


def sentence_transformers_difference(folder: str, texts: list[str], expected: torch.Tensor,
                                     max_length: int) -> Optional[float]:
    """Largest difference between ``SentenceTransformer(folder)``'s embeddings (truncated at ``max_length``
    tokens, as ours are) and ``expected``; None without sentence-transformers."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    model = SentenceTransformer(folder, device="cpu")
    model.max_seq_length = max_length
    return float((model.encode(texts, convert_to_tensor=True).float() - expected).abs().max())


# A reused folder's row names the command that made it; its setting's flags today resolve to the same settings.
RUNS_HEADING = ("Runs (the command that made each folder, as it ran: a folder reused under another setting's flags "
                "or a new name holds the settings those flags give today, checked field by field):")


def changed_settings(command: list[str], results: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Settings a run folder's ``results`` were made with that ``command`` resolves otherwise today, as
    (then, now): a changed flag, and a changed default too (``rankdyna.tinit`` for RankDynaConfig's fields).
    Where the folder lies, progress output and checkpointing do not count. A setting the record lacks is newer
    than the run: the run had its declared default, so it counts as changed when today's value is another."""
    import dataclasses

    from peft_rankdyna.config import RankDynaConfig
    from peft_rankdyna.jobs.checkpoints import NOT_COMPARED
    from peft_rankdyna.jobs.cli import build_parser, compress_settings
    from peft_rankdyna.jobs.length import with_default_length
    from peft_rankdyna.jobs.objectives import get_objective
    from peft_rankdyna.jobs.settings import CompressSettings

    def flat(settings: dict[str, Any]) -> dict[str, Any]:
        nested = {f"rankdyna.{key}": value for key, value in settings.get("rankdyna", {}).items()}
        return {**{key: value for key, value in settings.items() if key != "rankdyna"}, **nested}

    declared = {f.name: f.default for f in dataclasses.fields(CompressSettings) if f.name != "rankdyna"}
    declared.update({f"rankdyna.{f.name}": f.default for f in dataclasses.fields(RankDynaConfig)})
    declared = json.loads(json.dumps(declared, default=str))  # as a record holds them (tuples as lists)
    settings = compress_settings(build_parser().parse_args(command[1:]))
    settings = with_default_length(settings, get_objective(settings.objective).first_round)  # as the job resolves it
    now = flat(json.loads(json.dumps(dataclasses.asdict(settings))))
    then = {**declared, **flat(results["settings"])}
    return {key: (then.get(key), value) for key, value in now.items()
            if key not in NOT_COMPARED and then.get(key) != value}


def recorded_command(command: list[str], results: dict[str, Any], output: str) -> list[str]:
    """The command that made ``output``'s ``results``, once they are checked to be what ``command`` asks for today."""
    recorded = os.path.join(output, "benchmark_command.json")
    changed = changed_settings(command, results)
    if changed:
        raise SystemExit(f"{output} holds the results of other settings than this command's ("
                         + "; ".join(f"{key}: {then!r} then, {now!r} now" for key, (then, now) in changed.items())
                         + f"; the command that made it is in {recorded}); remove it or use another --work-dir.")
    if not os.path.isfile(recorded):
        raise SystemExit(f"{output} holds results but not the command that made them ({recorded}); remove it "
                         "or use another --work-dir.")
    with open(recorded, encoding="utf-8") as handle:
        return json.load(handle)


def run(args: argparse.Namespace, setting: tuple[str, list[str]], method: str, budget: float,
        paths: dict[str, str]) -> dict[str, Any]:
    """Run one compressed model (unless its folder holds the results of the settings this command resolves to);
    its row of validation figures."""
    from peft_rankdyna.io import portable_command
    from peft_rankdyna.jobs.checkpoints import last_checkpoint

    command = distill_command(args, setting, method, budget)
    output = command[command.index("--output") + 1]
    results_path = os.path.join(output, "results.json")
    if not os.path.isfile(results_path):
        checkpoint = last_checkpoint(output)  # a run killed after a checkpoint continues (compress checks its settings)
        print(f"running {setting[0]} {method} {budget:g}"
              + (f" from {os.path.basename(checkpoint)}" if checkpoint else "") + " ...", flush=True)
        os.makedirs(output, exist_ok=True)
        with open(os.path.join(output, "benchmark_command.json"), "w", encoding="utf-8") as handle:
            json.dump(command, handle)  # what made the folder's results
        resume = ["--resume"] if checkpoint else []
        subprocess.run([sys.executable, "-m", "peft_rankdyna.jobs.cli", *command[1:], *resume], check=True)
    with open(results_path, encoding="utf-8") as handle:
        results = json.load(handle)
    command = recorded_command(command, results, output)  # the row names the command that ran (flags: today's)
    return {"setting": setting[0], "flags": shlex.join(setting[1]), "method": LABELS[method], "budget": budget,
            "command": portable_command(command, paths), "folder": os.path.join(output, "compact"),
            **{f"validation_{name}": value for name, value in results["metrics"].items()},
            "target_params": results["target_params_after"], "train_texts": results["train_texts"],
            "train_steps": results["train_steps"], "wall_time_s": results["wall_time_s"],
            "resumed_from_step": results.get("resumed_from_step"),
            "curve": results.get("curve", [])}


def without_folder(row: dict[str, Any]) -> dict[str, Any]:
    """A row as recorded: without the run's folder on this machine."""
    return {key: value for key, value in row.items() if key != "folder"}


def pool_scores(row: dict[str, Any], data: Evaluation, max_length: int) -> dict[str, Any]:
    """A run's row with its scores on the pool, probes and pairs, and the sentence-transformers check."""
    from peft_rankdyna.compact import AutoCompactModel

    folder = row["folder"]
    encode = encoder(AutoCompactModel.from_pretrained(folder), folder, max_length)
    sample = data.pool[:ST_CHECK_TEXTS]
    return {**row, **score(encode, data),
            "sentence_transformers_max_diff": sentence_transformers_difference(folder, sample, encode(sample),
                                                                               max_length)}


def encoder(model: torch.nn.Module, folder: str, max_length: int) -> Any:
    """``encode(texts)``: the pooled embeddings of ``model`` as the model folder declares its pooling."""
    from transformers import AutoTokenizer

    from peft_rankdyna.jobs.objectives.embedding_distillation import embed
    from peft_rankdyna.pooling import read_pooling

    tokenizer, pooling = AutoTokenizer.from_pretrained(folder), read_pooling(folder)
    return lambda texts: embed(model, tokenizer, texts, pooling, max_length)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run (unless done) and score every model of every setting, and the teacher; the result ``main`` writes."""
    from transformers import AutoModel

    from peft_rankdyna.accounting import model_report
    from peft_rankdyna.io import portable_command
    from peft_rankdyna.pooling import read_pooling

    paths = {args.model: "$MODEL", args.glue_dir: "$GLUE_DIR", args.work_dir: "$WORK_DIR", args.texts: "$TEXTS"}
    runs = [run(args, setting, method, budget, paths) for setting in args.setting or [("default", [])]
            for method, budget in args.runs]
    result = {"pooling": read_pooling(args.model).to_dict(), "validation_only": args.validation_only,
              "command": f"python benchmarks/embeddings.py {portable_command(args.argv, paths)}",
              "environment": {"machine": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                              "threads": os.environ.get("OMP_NUM_THREADS", "unset")}}
    if args.validation_only:
        return {**result, "rows": [without_folder(row) for row in runs]}
    teacher = AutoModel.from_pretrained(args.model)
    encode = encoder(teacher, args.model, args.max_seq_length)
    data = evaluation(args, encode)
    rows = [{"setting": "—", "flags": "", "method": "dense (teacher)", "budget": None, "command": None,
             **score(encode, data), "target_params": model_report(teacher)["target_params"], "curve": []}]
    rows += [without_folder(pool_scores(row, data, args.max_seq_length)) for row in runs]
    return {**result, "rows": rows, "pool_texts": len(data.pool), "probe_samples": args.probe_samples}


def markdown(result: dict[str, Any]) -> str:
    """The result as a Markdown table with the settings and commands."""
    if result["validation_only"]:
        return validation_markdown(result)
    lines = ["# Sentence embeddings: compressed students against their dense teacher", "",
             f"Scored on {result['pool_texts']:,} pool sentences never trained on (recall@10 over the whole pool), "
             "MRPC dev pairs, and linear probes trained on the frozen embeddings of "
             f"{result['probe_samples']:,} training sentences per task. Each setting's runs share one seed and "
             "text; settings are rows, never merged or chosen.", "",
             "| setting | model | budget | mean cos | p5 cos | recall@10 | mixed recall@10 | MRPC AUC | SST-2 probe acc "
             "| CoLA probe MCC | cos on train text | cos on validation | steps | target params |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        budget = "—" if row["budget"] is None else f"{row['budget']:g}"
        lines.append(f"| {row['setting']} | {row['method']} | {budget} | {row['mean_cosine']:.4f} | "
                     f"{row['p5_cosine']:.4f} | {row['recall_at_10']:.3f} | {row['mixed_recall_at_10']:.3f} | "
                     f"{row['mrpc_auc']:.4f} | {row['sst2_probe']:.4f} | {row['cola_probe']:.4f} | "
                     f"{row['train_mean_cosine']:.4f} | {_figure(row.get('validation_mean_cosine'))} | "
                     f"{row.get('train_steps', '—')} | {row['target_params']:,} |")
    settings = {row["setting"]: row["flags"] for row in result["rows"][1:]}
    lines += ["", "Settings: " + "; ".join(f"`{name}` = `{flags or '(defaults)'}`" for name, flags in settings.items()),
              "", f"Pooling: {result['pooling']}. Command: `{result['command']}`", "", RUNS_HEADING, ""]
    lines += [f"- `{row['command']}`" for row in result["rows"] if row["command"]]
    return "\n".join(lines) + "\n"


def validation_markdown(result: dict[str, Any]) -> str:
    """The runs' own validation figures (``--validation-only``): what options are chosen on."""
    lines = ["# Sentence embeddings: distillation settings on the validation texts", "",
             "Each run scored by `rankdyna compress` on `$TEXTS/validation.txt` (never trained on; not the pool). "
             "Settings share the seed and the text; each is its own row.", "",
             "| setting | model | budget | mean cos | p5 cos | recall@10 | mixed recall@10 | steps | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['setting']} | {row['method']} | {row['budget']:g} | {row['validation_mean_cosine']:.4f} | "
                     f"{row['validation_p5_cosine']:.4f} | {_figure(row.get('validation_recall_at_10'), 3)} | "
                     f"{_figure(row.get('validation_mixed_recall_at_10'), 3)} | {row['train_steps']} | "
                     f"{row['wall_time_s']:.0f}{' ¶' if row.get('resumed_from_step') else ''} |")
    if any(row.get("resumed_from_step") for row in result["rows"]):
        lines += ["", "¶ resumed from a checkpoint: the wall time is the resumed process's only."]
    lines += ["", f"Command: `{result['command']}`", "", RUNS_HEADING, ""]
    return "\n".join(lines + [f"- `{row['command']}`" for row in result["rows"]]) + "\n"


def _figure(value: Optional[float], digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def plot_curves(result: dict[str, Any], path: str) -> None:
    """Mean cosine to the teacher (validation texts) against optimizer steps, one line per run."""
    from peft_rankdyna.jobs.plots import pyplot

    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for row in result["rows"]:
        if row["curve"]:
            axis.plot([p["step"] for p in row["curve"]], [p["mean_cosine"] for p in row["curve"]], "o-", markersize=3,
                      label=f"{row['setting']}: {row['method']} {row['budget']:g}")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("mean cosine to the teacher (held-out texts)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def parse_arguments(parser: argparse.ArgumentParser, argv: Optional[list[str]]) -> argparse.Namespace:
    """Parse ``argv``, keep it as ``args.argv`` (what the recorded command repeats), require the GLUE folder."""
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if not args.glue_dir:
        parser.error("--glue-dir (or GLUE_DIR) is needed: the probes and pairs come from GLUE.")
    return args


def write_outputs(out: str, result: dict[str, Any], markdown_of: Any, draw: Any) -> None:
    """``OUT.json`` (the result), ``OUT.md`` (``markdown_of(result)``, also printed) and ``OUT.png``
    (``draw(result, path)``)."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".json", "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)
    text = markdown_of(result)
    with open(out + ".md", "w", encoding="utf-8") as handle:
        handle.write(text)
    draw(result, out + ".png")
    print(text)


def run_spec(text: str) -> tuple[str, float]:
    """``METHOD:BUDGET`` → (method, budget)."""
    method, _, budget = text.partition(":")
    if method not in LABELS:
        raise argparse.ArgumentTypeError(f"a run is METHOD:BUDGET with METHOD one of {', '.join(LABELS)}")
    return method, float(budget)


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's arguments."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a sentence-transformers model folder (all-MiniLM-L6-v2)")
    parser.add_argument("--texts", required=True, help="folder written by benchmarks/embedding_texts.py")
    parser.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR"), help="GLUE root (MRPC, SST-2, CoLA)")
    parser.add_argument("--out", required=True, help="output path without extension (.json, .md and .png)")
    parser.add_argument("--work-dir", default="runs/embeddings")
    parser.add_argument("--setting", type=parse_setting, action="append",
                        help="NAME=FLAGS: one set of extra compress flags (repeatable; default: one, 'default')")
    parser.add_argument("--runs", type=run_spec, nargs="+", default=RUNS, help="METHOD:BUDGET pairs")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--max-train-samples", type=int, default=None, help="distil on the first N texts only")
    parser.add_argument("--eval-steps", type=int, default=500, help="score the students every N steps (the curve)")
    parser.add_argument("--save-steps", type=int, default=None,
                        help="checkpoint each run every N steps; a killed run then continues from its last checkpoint")
    parser.add_argument("--probe-samples", type=int, default=4000, help="training sentences per linear probe")
    parser.add_argument("--validation-only", action="store_true",
                        help="report the runs' own validation figures and curves only (no pool, probes or teacher "
                        "scoring): for choosing settings")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, measure, write OUT.json, OUT.md and OUT.png."""
    args = parse_arguments(build_parser(), argv)
    write_outputs(args.out, measure(args), markdown, plot_curves)


if __name__ == "__main__":
    main()
