"""Collect `rankdyna compress` output folders into one JSON file and one Markdown table.

    python benchmarks/summarize_runs.py runs/mrpc-dense runs/mrpc-0.5 runs/mrpc-0.25 --out benchmarks/results/mrpc_main

Each folder holds the ``results.json`` that ``rankdyna compress`` wrote (and, for RankDyna, the
compact model's ``report.json``). The table lists, per run, the command that reproduces it, the dev
metrics, parameters, compact size and FLOPs ratio, and the wall time as measured by that run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import Any

import torch
import transformers

from peft_rankdyna.io import portable_command


def command_of(settings: dict[str, Any]) -> str:
    """The `rankdyna compress` command line that reproduces a run with these settings."""
    parts = ["rankdyna", "compress", "--model", settings["model"], "--task", settings["task"]]
    parts += ["--dense"] if settings["budget"] is None else ["--budget", str(settings["budget"])]
    parts += ["--output", settings["output_dir"]]
    parts += ["--epochs", f"{settings['epochs']:g}"]  # always: the default length has changed (issue #21)
    defaults = {"learning_rate": 5e-5, "batch_size": 16, "max_seq_length": 128, "seed": 42}
    flags = {"learning_rate": "--lr", "batch_size": "--batch-size", "max_seq_length": "--max-seq-length",
             "seed": "--seed"}
    for key, flag in flags.items():
        if settings[key] != defaults[key]:
            parts += [flag, str(settings[key])]
    return portable_command(parts, {settings["model"]: "$MODEL"})


def load_run(folder: str) -> dict[str, Any]:
    """One run's results, with its compact report when there is one."""
    with open(os.path.join(folder, "results.json"), encoding="utf-8") as handle:
        run = json.load(handle)
    report_path = os.path.join(folder, "report.json")
    if os.path.isfile(report_path):
        with open(report_path, encoding="utf-8") as handle:
            report = json.load(handle)
        run.update(target_params_after=report["target_params"], model_params_after=report["model_params"],
                   flops_ratio=report["flops_ratio"], file_size_bytes=report.get("file_size_bytes"))
    run["command"] = command_of(run["settings"])
    return run


def markdown(runs: list[dict[str, Any]]) -> str:
    """The runs as a Markdown table, metrics first."""
    metric_names = list(runs[0]["metrics"])
    header = ["method", *metric_names, "target params", "model params", "weights MiB", "FLOPs/token vs dense",
              "wall time s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        budget = run["settings"]["budget"]
        size = run.get("file_size_bytes")
        cells = [
            "dense fine-tuning" if budget is None else f"RankDyna {budget:g}",
            *(f"{run['metrics'][name]:.4f}" for name in metric_names),
            f"{run.get('target_params_after', run.get('target_params_before', 0)):,}" if budget is not None else "all",
            f"{run['model_params_after']:,}",
            f"{size / 2**20:.1f}" if size else "",
            f"{run['flops_ratio']:.3f}" if "flops_ratio" in run else "1.000",
            f"{run['wall_time_s']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- `{run['command']}`" for run in runs]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="rankdyna compress output folders")
    parser.add_argument("--out", required=True, help="output path without extension (.json and .md are written)")
    args = parser.parse_args()
    runs = [load_run(folder) for folder in args.folders]
    environment = {"python": sys.version.split()[0], "torch": torch.__version__,
                   "transformers": transformers.__version__, "machine": platform.platform(),
                   "cpus": os.cpu_count()}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w", encoding="utf-8") as handle:
        json.dump({"environment": environment, "summarize_command": portable_command(sys.argv), "runs": runs}, handle,
                  indent=1)
    with open(args.out + ".md", "w", encoding="utf-8") as handle:
        handle.write(markdown(runs) + f"\n\nSummarised with `python {portable_command(sys.argv)}` on {environment}.\n")
    for folder, run in zip(args.folders, runs):
        if run["settings"]["budget"] is not None:
            draw(folder, f"{args.out}-{run['settings']['task']}-{run['settings']['budget']:g}")
    print(markdown(runs))


def draw(folder: str, prefix: str) -> None:
    """The final rank heat map and the schedule history of one RankDyna run, as PNG files."""
    from peft_rankdyna import AutoCompactModel
    from peft_rankdyna.jobs.plots import plot_history, plot_rank_heatmap
    from peft_rankdyna.accounting import matrix_table

    rows = matrix_table(AutoCompactModel.from_pretrained(os.path.join(folder, "compact")))
    plot_rank_heatmap(rows, prefix + "-ranks.png", title=f"Kept rank per matrix ({os.path.basename(folder)})")
    with open(os.path.join(folder, "rankdyna_history.json"), encoding="utf-8") as handle:
        history = json.load(handle)
    plot_history(history, sum(row.in_features * row.out_features for row in rows), prefix + "-history.png")


if __name__ == "__main__":
    main()
