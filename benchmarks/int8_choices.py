"""Which int8 settings to ship: each candidate's agreement with the fp32 graph, dev metric, file size, latency.

    python benchmarks/int8_choices.py RUNS/mrpc-0.5/compact RUNS/mrpc-0.25/compact --dense RUNS/mrpc-dense/finetuned \
        --task mrpc --out benchmarks/results/int8_choices --work-dir $WORK_DIR [--time]

Every compact folder is exported once (fp32 graphs, into ``--work-dir``), every ``--dense`` folder
with Optimum's export, the graph a dense user would quantize; the fused (or dense) graph is then
quantized with each candidate of :data:`CANDIDATES` through ``rankdyna_exporters.int8.quantize`` (the
static ones calibrated on :data:`CALIBRATION_EXAMPLES` training examples) and scored on the task's dev set: the share of examples whose class is the fp32 graph's (the export's
acceptance bar is ``Int8Options.min_agreement``), the dev metric, the file size.
With ``--time``, every graph of a folder is timed at batch 8 × sequence 128 in one process, the
graphs in a new shuffled order each round, medians over all rounds (side by side, so ratios within a
folder compare; absolute times depend on the machine's load). Writes ``OUT.json`` and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from typing import Any

import numpy as np

from peft_rankdyna.jobs.cli import main as rankdyna
from peft_rankdyna.io import atomic_write_text, portable_command
from rankdyna_exporters.int8 import MIN_AGREEMENT, Int8Options, quantize
from rankdyna_exporters.runtime import create_session
from peft_rankdyna.jobs.onnx_scoring import calibration_examples, dev_batches, dev_metrics, longest_input
from rankdyna_exporters.validation import agreement

CANDIDATES = {
    "all products and embeddings, per channel": Int8Options(),
    "all products, embeddings fp32": Int8Options(embeddings=False),
    "all products and embeddings, per tensor": Int8Options(per_channel=False),
    "factors narrower than 64 in fp32": Int8Options(min_rank=64),
    "factors narrower than 128 in fp32": Int8Options(min_rank=128),
    "factors narrower than 128 and embeddings in fp32": Int8Options(embeddings=False, min_rank=128),
    "static, min-max ranges": Int8Options(calibration="minmax"),
}
# Training examples the static candidates calibrate on (the dev set they are scored on is not among them).
CALIBRATION_EXAMPLES = 100
FP32 = "fp32 fused graph (reference)"


def latencies(paths: dict[str, str], rounds: int = 5, runs: int = 10) -> dict[str, float]:
    """Median ms at batch 8 × 128 of each graph, timed side by side in shuffled rounds."""
    feeds = {"input_ids": np.full((8, 128), 1000, dtype=np.int64), "attention_mask": np.ones((8, 128), np.int64),
             "token_type_ids": np.zeros((8, 128), np.int64)}
    sessions = {name: create_session(path) for name, path in paths.items()}
    inputs = {name: {i.name: feeds[i.name] for i in s.get_inputs()} for name, s in sessions.items()}
    times: dict[str, list[float]] = {name: [] for name in paths}
    order = list(paths)
    for _ in range(rounds):
        random.shuffle(order)
        for name in order:
            sessions[name].run(None, inputs[name])  # warm-up
            for _ in range(runs):
                start = time.perf_counter()
                sessions[name].run(None, inputs[name])
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}


def exported(source: str, dense: bool, work_dir: str) -> tuple[str, str, str]:
    """Export ``source`` once into ``work_dir``: its label, folder and the fp32 graph the candidates start from.

    A compact folder goes through ``rankdyna export`` (the fused graph); a dense fine-tuned folder through
    Optimum's own export (the graph a dense user would quantize).
    """
    label = os.path.basename(os.path.dirname(os.path.normpath(source))) + ("/" + os.path.basename(source))
    folder = os.path.join(work_dir, label.replace("/", "-"))
    if dense:
        if not os.path.isfile(os.path.join(folder, "model.onnx")):
            from optimum.exporters.onnx import main_export

            main_export(source, folder, task="text-classification", do_validation=False)
        return label, folder, "model.onnx"
    if not os.path.isfile(os.path.join(folder, "rankdyna_export.json")) and rankdyna(["export", source, folder]):
        raise SystemExit(f"export of {source} failed")
    return label, folder, "model_fused.onnx"


def measure_folder(source: str, dense: bool, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The fp32 graph's and every candidate's row for one model folder."""
    from transformers import AutoTokenizer

    label, folder, graph = exported(source, dense, args.work_dir)
    reference = create_session(os.path.join(folder, graph))
    names = [i.name for i in reference.get_inputs()]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batches, labels = dev_batches(tokenizer, args.task, args.glue_dir, names, longest_input(folder))
    calibration = calibration_examples(tokenizer, args.task, args.glue_dir, names, longest_input(folder),
                                       CALIBRATION_EXAMPLES)
    paths = {FP32: os.path.join(folder, graph)}
    rows = [{"model": label, "candidate": FP32, "metrics": dev_metrics(reference, batches, labels, args.task),
             "agreement": 1.0, "file_mib": os.path.getsize(paths[FP32]) / 2**20}]
    candidates = {name: CANDIDATES[name] for name in args.candidates if not (dense and CANDIDATES[name].min_rank)}
    for index, (name, options) in enumerate(candidates.items()):
        paths[name] = os.path.join(folder, f"candidate{index}_int8.onnx")
        settings = quantize(folder, graph, os.path.basename(paths[name]), options, calibration)
        session = create_session(paths[name])
        check = agreement(session, reference, batches, "logits")
        rows.append({"model": label, "candidate": name, "settings": settings,
                     "metrics": dev_metrics(session, batches, labels, args.task), "agreement": check["agreement"],
                     "max_abs_diff": check["max_abs_diff"], "file_mib": os.path.getsize(paths[name]) / 2**20})
        print(f"{label}: {name}: agreement {check['agreement']:.4f}", flush=True)
    if args.time:
        medians = latencies(paths)
        for row in rows:
            row["median_ms_b8x128"] = medians[row["candidate"]]
            row["latency_vs_fp32"] = medians[row["candidate"]] / medians[FP32]
    return rows


def markdown(result: dict[str, Any]) -> str:
    timed = "median_ms_b8x128" in result["rows"][0]
    header = ["model", "candidate", "agrees with fp32", "dev metrics", "file MiB"]
    header += ["ms (b8 × 128)", "vs fp32"] if timed else []
    lines = ["# int8 candidates against the fp32 fused graph", "",
             f"Dev set of {result['task']}; the export keeps an int8 graph only when it agrees on ≥ "
             f"{MIN_AGREEMENT:.0%} of the examples.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in result["rows"]:
        cells = [row["model"], row["candidate"], f"{row['agreement']:.4f}",
                 " / ".join(f"{k} {v:.4f}" for k, v in row["metrics"].items()), f"{row['file_mib']:.1f}"]
        if timed:
            cells += [f"{row['median_ms_b8x128']:.1f}", f"{row['latency_vs_fp32']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{result['command']}`", "", f"Machine: {result['environment']}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("compact", nargs="+", help="compact model folders (classifiers trained on --task)")
    parser.add_argument("--dense", nargs="*", default=[], help="dense fine-tuned folders: the int8 reference")
    parser.add_argument("--task", required=True)
    parser.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR"))
    parser.add_argument("--out", required=True, help="results path without extension")
    parser.add_argument("--work-dir", default="runs/int8", help="where the exports and candidates go")
    parser.add_argument("--time", action="store_true", help="also time every graph side by side")
    parser.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES),
                        metavar="NAME", help="measure only these candidates (default: all)")
    args = parser.parse_args()
    if not args.glue_dir:
        parser.error("--glue-dir (or GLUE_DIR) is needed: candidates are scored on the dev set.")
    rows = [row for source, dense in [*((d, True) for d in args.dense), *((c, False) for c in args.compact)]
            for row in measure_folder(source, dense, args)]
    import onnxruntime

    paths = {args.work_dir: "$WORK_DIR", args.glue_dir: "$GLUE_DIR",
             **{os.path.dirname(os.path.dirname(os.path.normpath(c))): "$RUNS" for c in args.compact + args.dense}}
    result = {"task": args.task, "rows": rows, "command": "python " + portable_command(sys.argv, paths),
              "environment": f"{platform.platform()}, {os.cpu_count()} CPUs, onnxruntime {onnxruntime.__version__}"}
    atomic_write_text(args.out + ".json", json.dumps(result, indent=1))
    atomic_write_text(args.out + ".md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
