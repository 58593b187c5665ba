"""Deployed sentence-embedding graphs on the CPU: compressed students against the teacher's own ONNX graphs.

    python benchmarks/embeddings_deploy.py --teacher $MODEL --students rankdyna-0.5=$EXPORT_05 \\
        --texts $TEXTS --glue-dir $GLUE_DIR --out benchmarks/results/embeddings_deploy --work-dir $WORK_DIR

The teacher's graphs are what an Optimum user would deploy: Optimum's export of the dense model,
onnxruntime's optimizer (fp32) and the dynamic int8 quantization our own int8 graphs use (the
dense graphs of ``rankdyna bench``), each with the teacher's pooling appended (``sentence_embedding``),
as our exports carry it. A student is a ``rankdyna export --int8`` folder: its fused fp32 graph
(onnxruntime's fusions) and its int8 graph. Every graph is judged two ways:

- speed: sentences per second at each ``--batch-sizes`` on real sentence lengths — the first
  ``--sentences`` sentences of a seeded shuffle of ``$TEXTS/pool.txt``, each batch padded to its
  longest sentence, never to 128 — in ``--rounds`` rounds, the graphs in a new shuffled order each
  round, the median reported, and the ratio to the teacher's graph of the same precision;
- quality against the fp32 PyTorch teacher: the measures of ``benchmarks/embeddings.py`` (cosine,
  recall@10 and the mixed index over the pool, MRPC pair AUC, SST-2 and CoLA linear probes).

Writes ``OUT.json``, ``OUT.md`` and ``OUT.png``.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import time
from typing import Any, Callable

import numpy as np
import torch

from embeddings import encoder, evaluation, parse_arguments, score, write_outputs  # measures written once


def teacher_graphs(teacher: str, work_dir: str) -> dict[str, str]:
    """The teacher's fp32 (ort-optimized) and int8 graphs with its pooling appended (in ``pooled/`` of the
    folder where ``rankdyna bench`` caches the dense graphs in ``work_dir``; made once)."""
    from rankdyna_exporters.bench import ONNX_DENSE_INT8, ONNX_DENSE_ORT, dense_variants
    from rankdyna_exporters.pooled import add_pooling

    from peft_rankdyna.pooling import read_pooling

    found = {v.name: v.path for v in dense_variants(teacher, "AutoModel", 0, work_dir)}
    graphs = {}
    for precision, name in (("fp32", ONNX_DENSE_ORT), ("int8", ONNX_DENSE_INT8)):
        graphs[precision] = os.path.join(os.path.dirname(found[name]), "pooled", os.path.basename(found[name]))
        if not os.path.isfile(graphs[precision]):
            os.makedirs(os.path.dirname(graphs[precision]), exist_ok=True)
            shutil.copyfile(found[name], graphs[precision] + ".tmp")
            add_pooling(graphs[precision] + ".tmp", read_pooling(teacher))
            os.replace(graphs[precision] + ".tmp", graphs[precision])
    return graphs


def student_graphs(export_dir: str) -> dict[str, str]:
    """A student export's fused fp32 graph and int8 graph (an error when it was exported without ``--int8``)."""
    from rankdyna_exporters.layout import FILE_NAMES, FUSED_ORT, INT8

    graphs = {"fp32": os.path.join(export_dir, FILE_NAMES[FUSED_ORT]), "int8": os.path.join(export_dir, FILE_NAMES[INT8])}
    missing = [path for path in graphs.values() if not os.path.isfile(path)]
    if missing:
        raise SystemExit(f"{export_dir}: no {', '.join(map(os.path.basename, missing))}; export with --int8.")
    return graphs


def onnx_encoder(path: str, tokenizer: Any, threads: int, max_length: int
                 ) -> tuple[Any, Callable[[list[str]], torch.Tensor]]:
    """An onnxruntime session of a pooled graph and ``encode(texts)`` → its ``sentence_embedding`` (batches of 64)."""
    from rankdyna_exporters.runtime import CPU, create_session

    session = create_session(path, CPU, threads=threads or None)
    names = [i.name for i in session.get_inputs()]

    def encode(texts: list[str]) -> torch.Tensor:
        found = [session.run(["sentence_embedding"], feed)[0] for feed in batches(tokenizer, texts, 64, names,
                                                                                   max_length)]
        return torch.from_numpy(np.concatenate(found)).float()

    return session, encode


def batches(tokenizer: Any, texts: list[str], batch_size: int, names: list[str],
            max_length: int = 128) -> list[dict[str, np.ndarray]]:
    """``texts`` tokenised in batches of ``batch_size``, each padded to its own longest text."""
    found = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                          return_tensors="np")
        found.append({name: batch[name].astype(np.int64) for name in names})
    return found


def throughput(sessions: dict[str, Any], tokenizer: Any, texts: list[str], batch_sizes: list[int], rounds: int,
               max_length: int, seed: int = 0) -> dict[str, dict[int, list[float]]]:
    """Sentences per second of every session at every batch size, one figure per round (order reshuffled)."""
    names = {label: tuple(i.name for i in session.get_inputs()) for label, session in sessions.items()}
    feeds_of = {(inputs, b): batches(tokenizer, texts, b, list(inputs), max_length)  # tokenised once, not per round
                for inputs in set(names.values()) for b in batch_sizes}
    rates: dict[str, dict[int, list[float]]] = {label: {b: [] for b in batch_sizes} for label in sessions}
    order = random.Random(seed)
    for _ in range(rounds):
        jobs = [(label, b) for label in sessions for b in batch_sizes]
        order.shuffle(jobs)
        for label, batch_size in jobs:
            feeds = feeds_of[(names[label], batch_size)]
            sessions[label].run(["sentence_embedding"], feeds[0])  # warm-up at this batch size
            start = time.perf_counter()
            for feed in feeds:
                sessions[label].run(["sentence_embedding"], feed)
            rates[label][batch_size].append(len(texts) / (time.perf_counter() - start))
    return rates


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Score and time every graph; the result ``main`` writes."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    data = evaluation(args, encoder(AutoModel.from_pretrained(args.teacher), args.teacher, args.max_seq_length))
    graphs = {f"teacher {precision}": path for precision, path in teacher_graphs(args.teacher, args.work_dir).items()}
    for name, export_dir in args.students:
        graphs.update({f"{name} {precision}": path for precision, path in student_graphs(export_dir).items()})
    sessions, rows = {}, []
    for label, path in graphs.items():
        sessions[label], encode = onnx_encoder(path, tokenizer, args.threads, args.max_seq_length)
        print(f"scoring {label} ...", flush=True)
        rows.append({"graph": label, "file": os.path.basename(path), "size_mib": os.path.getsize(path) / 2**20,
                     **score(encode, data)})
    texts = data.pool[:]
    random.Random(0).shuffle(texts)
    texts = texts[:args.sentences]
    rates = throughput(sessions, tokenizer, texts, args.batch_sizes, args.rounds, args.max_seq_length)
    for row in rows:
        row["sentences_per_s"] = {str(b): statistics.median(r) for b, r in rates[row["graph"]].items()}
        row["sentences_per_s_rounds"] = {str(b): r for b, r in rates[row["graph"]].items()}
    return {"rows": rows, "sentences": len(texts), "mean_tokens": mean_tokens(tokenizer, texts, args.max_seq_length),
            "batch_sizes": args.batch_sizes, "rounds": args.rounds, "threads": args.threads or "all cores",
            "command": recorded_command(args),
            "environment": {"machine": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__}}


def recorded_command(args: argparse.Namespace) -> str:
    """The command line, without this machine's paths: each student's folder is ``$NAME`` (upper case)."""
    from peft_rankdyna.io import portable_command

    paths = {args.teacher: "$MODEL", args.glue_dir: "$GLUE_DIR", args.work_dir: "$WORK_DIR", args.texts: "$TEXTS"}
    students = {f"{name}={folder}": f"{name}=${''.join(c for c in name.upper() if c.isalnum())}"
                for name, folder in args.students}
    parts = [students[arg] if arg in students else portable_command([arg], paths) for arg in args.argv]
    return "python benchmarks/embeddings_deploy.py " + " ".join(parts)


def mean_tokens(tokenizer: Any, texts: list[str], max_length: int) -> float:
    """Mean tokens per text (after truncation at ``max_length``)."""
    return float(np.mean([len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]))


def markdown(result: dict[str, Any]) -> str:
    """The result as a Markdown table with its command."""
    rows = {row["graph"]: row for row in result["rows"]}
    sizes = result["batch_sizes"]
    lines = ["# Deployed sentence-embedding graphs on the CPU", "",
             f"{result['sentences']} pool sentences (mean {result['mean_tokens']:.1f} tokens), each batch padded to "
             f"its longest; median of {result['rounds']} rounds; {result['threads']} threads. Speed ratio: against "
             "the teacher's graph of the same precision. Quality: against the fp32 PyTorch teacher, on text never "
             "trained on.", "",
             "| graph | MiB | " + " | ".join(f"sent/s b{b} (× teacher)" for b in sizes) +
             " | mean cos | recall@10 | mixed recall@10 | MRPC AUC | SST-2 probe | CoLA probe |",
             "|---|---|" + "---|" * len(sizes) + "---|---|---|---|---|---|"]
    for label, row in rows.items():
        reference = rows["teacher " + label.rsplit(" ", 1)[1]]
        rate, base = row["sentences_per_s"], reference["sentences_per_s"]
        speed = [f"{rate[str(b)]:.1f} ({rate[str(b)] / base[str(b)]:.2f}×)" for b in sizes]
        lines.append(f"| {label} | {row['size_mib']:.1f} | " + " | ".join(speed) +
                     f" | {row['mean_cosine']:.4f} | {row['recall_at_10']:.3f} | {row['mixed_recall_at_10']:.3f} | "
                     f"{row['mrpc_auc']:.4f} | {row['sst2_probe']:.4f} | {row['cola_probe']:.4f} |")
    lines += ["", f"Command: `{result['command']}`"]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: str) -> None:
    """Sentences per second of every graph, one panel per batch size."""
    from peft_rankdyna.jobs.plots import pyplot

    plt = pyplot()
    sizes = result["batch_sizes"]
    figure, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
    labels = [row["graph"] for row in result["rows"]]
    for axis, batch_size in zip(axes[0], sizes):
        axis.barh(labels, [row["sentences_per_s"][str(batch_size)] for row in result["rows"]],
                  color=["C0" if label.startswith("teacher") else "C1" for label in labels])
        axis.set_title(f"batch {batch_size}")
        axis.set_xlabel("sentences per second (CPU)")
        axis.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def student_spec(text: str) -> tuple[str, str]:
    """``NAME=EXPORT_DIR`` → (name, folder)."""
    name, _, folder = text.partition("=")
    if not name or not folder:
        raise argparse.ArgumentTypeError(f"a student is NAME=EXPORT_DIR, got {text!r}")
    return name, folder


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, measure, write OUT.json, OUT.md and OUT.png."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="the teacher's sentence-transformers folder")
    parser.add_argument("--students", type=student_spec, nargs="+", required=True,
                        help="NAME=EXPORT_DIR: `rankdyna export --int8` folders of compressed students")
    parser.add_argument("--texts", required=True, help="folder written by benchmarks/embedding_texts.py")
    parser.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR"), help="GLUE root (MRPC, SST-2, CoLA)")
    parser.add_argument("--out", required=True, help="output path without extension (.json, .md and .png)")
    parser.add_argument("--work-dir", default="runs/embeddings-deploy", help="cache of the teacher's graphs")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--sentences", type=int, default=512, help="pool sentences timed per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (default: one per core)")
    parser.add_argument("--max-seq-length", type=int, default=128, help="tokens per sentence at most")
    parser.add_argument("--probe-samples", type=int, default=4000, help="training sentences per linear probe")
    args = parse_arguments(parser, argv)
    write_outputs(args.out, measure(args), markdown, plot)


if __name__ == "__main__":
    main()
