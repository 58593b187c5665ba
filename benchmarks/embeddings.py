"""Compressed sentence-embedding models: RankDyna against uniform truncated SVD, both distilled from the dense model.

    GLUE_DIR=../shared/data/glue python benchmarks/embeddings.py --model $MODEL --out benchmarks/results/embeddings

The distillation texts are MRPC's *training* sentences (both columns); everything is scored on text
that was not trained on: MRPC's dev sentences. Each compressed model is one
``rankdyna compress --objective embedding-distillation`` run in its own process (skipped when its
folder already holds results, so the benchmark resumes); then every model, the dense teacher
included, is scored: mean (and 5th-percentile) cosine between its embeddings and the teacher's on
the dev sentences, and the ROC AUC of the cosine similarity of each MRPC dev pair against the
paraphrase label, a task metric from embeddings alone; and, to tell under- from over-fitting, the
mean cosine on :data:`FIT_TEXTS` of the training sentences. Writes ``OUT.json`` and ``OUT.md`` with
the commands.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from typing import Any

import torch
import torch.nn.functional as F

RUNS = [("rankdyna", 0.5), ("rankdyna", 0.25), ("svd", 0.5), ("svd", 0.25)]
LABELS = {"rankdyna": "RankDyna", "svd": "uniform SVD"}
FIT_TEXTS = 1000  # training sentences (a seeded sample) the fit to the teacher is also measured on


def write_texts(glue_dir: str, work_dir: str) -> tuple[str, str]:
    """MRPC's training sentences and dev sentences, one per line, for the distillation runs."""
    from peft_rankdyna.jobs.data.glue import get_task, load_glue

    task = get_task("mrpc")
    paths = []
    for split in ("train", "dev"):
        texts = [text for column in load_glue(task, split, glue_dir).texts for text in column]
        path = os.path.join(work_dir, f"mrpc-{split}-sentences.txt")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("\n".join(texts) + "\n")
        paths.append(path)
    return paths[0], paths[1]


def distill_command(args: argparse.Namespace, method: str, budget: float, train: str, dev: str) -> list[str]:
    """The ``rankdyna compress`` command of one compressed model."""
    return ["rankdyna", "compress", "--model", args.model, "--objective", "embedding-distillation", "--texts", train,
            "--validation-texts", dev, "--method", method, "--budget", f"{budget:g}", "--seed", str(args.seed),
            "--epochs", f"{args.epochs:g}", "--lr", f"{args.lr:g}", "--max-seq-length", str(args.max_seq_length),
            "--output", os.path.join(args.work_dir, f"{method}-{budget:g}"), "--no-progress",
            *(["--max-train-samples", str(args.max_train_samples)] if args.max_train_samples else [])]


def score(model: torch.nn.Module, tokenizer: Any, pooling: Any, teacher: torch.Tensor, glue_dir: str,
          max_length: int) -> dict[str, float]:
    """Cosine to the teacher on the MRPC dev sentences and the MRPC dev pair AUC of ``model``."""
    from sklearn.metrics import roc_auc_score

    from peft_rankdyna.jobs.data.glue import get_task, load_glue
    from peft_rankdyna.jobs.objectives.embedding_distillation import cosine_report, embed

    dev = load_glue(get_task("mrpc"), "dev", glue_dir)
    first, second = (embed(model, tokenizer, column, pooling, max_length) for column in dev.texts)
    similarity = F.cosine_similarity(first, second, dim=-1).numpy()
    return {**cosine_report(torch.cat([first, second]), teacher), "mrpc_auc": float(roc_auc_score(dev.labels, similarity))}


def fit_sample(train_path: str, count: int = FIT_TEXTS) -> list[str]:
    """A seeded sample of the distillation's own training sentences."""
    with open(train_path, encoding="utf-8") as handle:
        texts = handle.read().splitlines()
    return [texts[i] for i in sorted(torch.randperm(len(texts), generator=torch.Generator().manual_seed(0))[:count])]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoModel, AutoTokenizer

    from peft_rankdyna.compact import AutoCompactModel
    from peft_rankdyna.jobs.data.glue import get_task, load_glue
    from peft_rankdyna.jobs.objectives.embedding_distillation import cosine_report, embed
    from peft_rankdyna.io import portable_command
    from peft_rankdyna.pooling import read_pooling
    from peft_rankdyna.accounting import model_report

    os.makedirs(args.work_dir, exist_ok=True)
    train, dev = write_texts(args.glue_dir, args.work_dir)
    paths = {args.model: "$MODEL", args.glue_dir: "$GLUE_DIR", args.work_dir: "$WORK_DIR"}
    tokenizer, pooling = AutoTokenizer.from_pretrained(args.model), read_pooling(args.model)
    teacher_model = AutoModel.from_pretrained(args.model)
    dev_split = load_glue(get_task("mrpc"), "dev", args.glue_dir)
    teacher = torch.cat([embed(teacher_model, tokenizer, column, pooling, args.max_seq_length)
                         for column in dev_split.texts])
    fit_texts = fit_sample(train)
    teacher_fit = embed(teacher_model, tokenizer, fit_texts, pooling, args.max_seq_length)

    def fit(model: torch.nn.Module, model_pooling: Any) -> float:
        student = embed(model, tokenizer, fit_texts, model_pooling, args.max_seq_length)
        return cosine_report(student, teacher_fit)["mean_cosine"]

    rows = [{"method": "dense (teacher)", "budget": None, "command": None, "train_mean_cosine": 1.0,
             **score(teacher_model, tokenizer, pooling, teacher, args.glue_dir, args.max_seq_length),
             "target_params": model_report(teacher_model)["target_params"]}]
    for method, budget in RUNS:
        command = distill_command(args, method, budget, train, dev)
        output = command[command.index("--output") + 1]
        if not os.path.isfile(os.path.join(output, "results.json")):
            print(f"running {method} {budget:g} ...", flush=True)
            subprocess.run([sys.executable, "-m", "peft_rankdyna.jobs.cli", *command[1:]], check=True)
        with open(os.path.join(output, "results.json"), encoding="utf-8") as handle:
            results = json.load(handle)
        compact = AutoCompactModel.from_pretrained(os.path.join(output, "compact"))
        compact_pooling = read_pooling(os.path.join(output, "compact"))
        rows.append({"method": LABELS[method], "budget": budget, "command": portable_command(command, paths),
                     **score(compact, tokenizer, compact_pooling, teacher, args.glue_dir, args.max_seq_length),
                     "train_mean_cosine": fit(compact, compact_pooling),
                     "target_params": results["target_params_after"], "file_size_bytes": results["file_size_bytes"],
                     "train_texts": results["train_texts"], "wall_time_s": results["wall_time_s"]})
    return {"rows": rows, "pooling": pooling.to_dict(),
            "command": "python " + portable_command(sys.argv, paths),
            "environment": {"machine": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__}}


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Sentence embeddings: RankDyna vs uniform SVD, both distilled from the dense model", "",
             "Distilled on MRPC's training sentences; scored on MRPC's dev sentences (not trained on), except the "
             "training-sentence column: the fit on a seeded sample of the sentences distilled on.", "",
             "| model | budget | mean cosine to teacher | 5th-percentile cosine | MRPC dev pair AUC | "
             f"mean cosine, {FIT_TEXTS:,} training sentences | target params |",
             "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        budget = "—" if row["budget"] is None else f"{row['budget']:g}"
        lines.append(f"| {row['method']} | {budget} | {row['mean_cosine']:.4f} | {row['p5_cosine']:.4f} | "
                     f"{row['mrpc_auc']:.4f} | {row['train_mean_cosine']:.4f} | {row['target_params']:,} |")
    lines += ["", f"Pooling: {result['pooling']}. Command: `{result['command']}`", "", "Runs:", ""]
    lines += [f"- `{row['command']}`" for row in result["rows"] if row["command"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a sentence-transformers model folder (all-MiniLM-L6-v2)")
    parser.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR"), help="GLUE root (MRPC)")
    parser.add_argument("--out", required=True, help="output path without extension (.json and .md)")
    parser.add_argument("--work-dir", default="runs/embeddings")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--max-train-samples", type=int, default=None, help="distil on the first N texts only")
    args = parser.parse_args(argv)
    if not args.glue_dir:
        parser.error("--glue-dir (or GLUE_DIR) is needed: the texts and the scores come from MRPC.")
    result = measure(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)
    text = markdown(result)
    with open(args.out + ".md", "w", encoding="utf-8") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
