"""Figures and the summary table of ``benchmarks/diagnosis.py`` runs (one JSON file per run in a folder).

    python benchmarks/diagnosis.py plot [--out benchmarks/results/diagnosis]

- ``curves_<task>.png``: training loss and dev metric over steps, one panel per seed, one line per variant;
- ``update_size.png``: the relative per-step update of the effective weights by matrix kind, dense vs factored;
- ``importance_<label>.png``: score scale by layer and kind at the first refresh; ranking stability over steps;
- ``allocation_<label>.png``: total rank per layer at every refresh, and the largest one-refresh drop;
- ``summary.md``: the numbers behind them and the command of every run.
"""

from __future__ import annotations

import glob
import json
import math
import os
import statistics
from collections import defaultdict
from typing import Any

from peft_rankdyna.jobs.plots import pyplot
from peft_rankdyna.targets import KIND_ORDER

METRIC = {"cola": "matthews_correlation", "mrpc": "accuracy", "sst2": "accuracy"}


def load_runs(folder: str) -> list[dict[str, Any]]:
    """Every run record in ``folder`` (not the allocation checks beside them), sorted by task, label and seed."""
    records = []
    for path in glob.glob(os.path.join(folder, "*.json")):
        with open(path, encoding="utf-8") as handle:
            records.append(json.load(handle))
    return sorted((r for r in records if "curve" in r), key=lambda r: (r["task"], r["label"], r["seed"]))


def _kind(name: str) -> str:
    return name.split(" ", 1)[1]


def _layer(name: str) -> int:
    return int(name.split(" ", 1)[0][1:])


def _save(figure: Any, path: str) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot().close(figure)
    return path


def median_update_by_kind(run: dict[str, Any], first_step: int = 1) -> dict[str, float]:
    """Median over steps and layers of the relative update, per matrix kind (steps from ``first_step`` on)."""
    values = defaultdict(list)
    for entry in run["updates"]:
        if entry["step"] >= first_step:
            for name, size in entry["relative_update"].items():
                values[_kind(name)].append(size)
    return {kind: statistics.median(values[kind]) for kind in KIND_ORDER if values[kind]}


def plot_curves(runs: list[dict[str, Any]], task: str, path: str) -> str:
    plt = pyplot()
    seeds = sorted({r["seed"] for r in runs})
    palette = plt.get_cmap("tab20").colors  # one colour per variant in every panel
    colors = {label: palette[i % len(palette)] for i, label in enumerate(sorted({r["label"] for r in runs}))}
    figure, axes = plt.subplots(2, len(seeds), figsize=(6 * len(seeds), 7), squeeze=False, sharex="col")
    for column, seed in enumerate(seeds):
        for run in (r for r in runs if r["seed"] == seed):
            loss, metric, color = axes[0][column], axes[1][column], colors[run["label"]]
            loss.plot([e["step"] for e in run["loss"]], [e["loss"] for e in run["loss"]], label=run["label"],
                      color=color)
            metric.plot([e["step"] for e in run["curve"]], [e[METRIC[task]] for e in run["curve"]], marker=".",
                        label=run["label"], color=color)
        axes[0][column].set_title(f"{task} seed {seed}")
        axes[0][column].set_ylabel("training loss (mean of 50 steps)")
        axes[1][column].set_ylabel(f"dev {METRIC[task]}")
        axes[1][column].set_xlabel("optimizer step")
        axes[0][column].legend(fontsize="small")
    return _save(figure, path)


def plot_update_sizes(runs: list[dict[str, Any]], path: str) -> str:
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(8, 4))
    chosen = [r for r in runs if r["variant"] in ("dense", "fullrank")]
    width = 0.8 / max(1, len(chosen))
    medians = [median_update_by_kind(run, first_step=100) for run in chosen]  # after the learning-rate warm-up
    kinds = [kind for kind in KIND_ORDER if any(kind in m for m in medians)]
    for index, (run, median) in enumerate(zip(chosen, medians)):
        xs = [kinds.index(k) + index * width for k in median]
        axes.bar(xs, list(median.values()), width=width, label=f"{run['label']} s{run['seed']}")
    axes.set_xticks([i + 0.4 - width / 2 for i in range(len(kinds))], kinds)
    axes.set_ylabel("median ‖ΔW‖_F / ‖W‖_F per step")
    axes.set_title("Update of the effective weight per optimizer step (steps ≥ 100)")
    axes.legend(fontsize="small")
    return _save(figure, path)


def plot_importance(run: dict[str, Any], path: str) -> str:
    plt = pyplot()
    refreshes = run["refreshes"]
    first = refreshes[1] if len(refreshes) > 1 else refreshes[0]
    layers = sorted({_layer(n) for n in first["score_median"]})
    kinds = [kind for kind in KIND_ORDER if any(f"L{layer} {kind}" in first["score_median"] for layer in layers)]
    grid = [[math.log10(max(first["score_median"][f"L{layer} {kind}"], 1e-30)) for kind in kinds] for layer in layers]
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    image = left.imshow(grid, aspect="auto", cmap="magma")
    left.set_xticks(range(len(kinds)), kinds)
    left.set_yticks(range(len(layers)), [f"layer {layer}" for layer in layers])
    left.set_title(f"log10 median group score at step {first['step']}")
    figure.colorbar(image, ax=left)
    steps = [r["step"] for r in refreshes if "spearman_vs_previous" in r]
    right.plot(steps, [statistics.mean(r["spearman_vs_previous"].values()) for r in refreshes
                       if "spearman_vs_previous" in r], label="Spearman of group scores vs previous refresh")
    right.plot(steps, [r["target_allocation_jaccard_vs_previous"] for r in refreshes if "spearman_vs_previous" in r],
               label="allocation at the target: overlap with previous refresh")
    right.plot([r["step"] for r in refreshes], [r["target_allocation_jaccard_vs_final"] for r in refreshes],
               label="allocation at the target: overlap with the last refresh")
    right.set_xlabel("optimizer step")
    right.set_ylim(0, 1.02)
    right.legend(fontsize="small")
    right.set_title(f"{run['label']} seed {run['seed']}: ranking stability")
    return _save(figure, path)


def plot_allocation(run: dict[str, Any], path: str) -> str:
    plt = pyplot()
    refreshes = run["refreshes"]
    steps = [r["step"] for r in refreshes]
    layers = sorted({_layer(n) for n in refreshes[0]["ranks"]})
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for layer in layers:
        top.plot(steps, [sum(v for n, v in r["ranks"].items() if _layer(n) == layer) for r in refreshes],
                 label=f"layer {layer}", drawstyle="steps-post")
    top.set_ylabel("kept rank, sum over the layer's matrices")
    top.legend(ncol=3, fontsize="small")
    drops = [max(r.get("rank_drop", {"": 0}).values()) for r in refreshes]
    bottom.bar(steps, drops, width=max(1, (steps[-1] - steps[0]) / (3 * len(steps))))
    bottom.set_ylabel("largest drop of one matrix's rank at a refresh")
    bottom.set_xlabel("optimizer step")
    top.set_title(f"{run['label']} seed {run['seed']}: allocation over training")
    return _save(figure, path)


def summary(runs: list[dict[str, Any]]) -> str:
    """The numbers behind the figures, as Markdown."""
    lines = ["# Diagnosis runs", "", "| task | run | seed | final dev metric | first step with top-class share < 0.95 "
             "| wall s |", "|---|---|---|---|---|---|"]
    for run in runs:
        metric = METRIC[run["task"]]
        learned = next((e["step"] for e in run["curve"] if e.get("top_class_share", 0) < 0.95), None)
        lines.append(f"| {run['task']} | {run['label']} | {run['seed']} | {run['final_metrics'][metric]:.4f} | "
                     f"{learned if learned is not None else 'never'} | {run['wall_time_s']:.0f} |")
    chosen = [(run, median_update_by_kind(run, 100)) for run in runs if run["variant"] in ("dense", "fullrank")]
    kinds = [kind for kind in KIND_ORDER if any(kind in medians for _, medians in chosen)]
    lines += ["", "Median relative update ‖ΔW‖_F/‖W‖_F per step (steps ≥ 100), by matrix kind:", "",
              "| run | seed | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
    for run, medians in chosen:
        lines.append(f"| {run['label']} | {run['seed']} | "
                     + " | ".join(f"{medians.get(k, float('nan')):.2e}" for k in kinds) + " |")
    lines += ["", "Commands:", ""] + [f"- `{run['command']}`" for run in runs] + [""]
    return "\n".join(lines)


def plot_all(folder: str) -> None:
    """Draw every figure and write ``summary.md`` for the runs in ``folder``."""
    runs = load_runs(folder)
    written = []
    for task in sorted({r["task"] for r in runs}):
        written.append(plot_curves([r for r in runs if r["task"] == task], task, os.path.join(folder, f"curves_{task}.png")))
    written.append(plot_update_sizes(runs, os.path.join(folder, "update_size.png")))
    for run in runs:
        if run["refreshes"]:
            stem = f"{run['label']}-s{run['seed']}"
            written.append(plot_importance(run, os.path.join(folder, f"importance_{stem}.png")))
            written.append(plot_allocation(run, os.path.join(folder, f"allocation_{stem}.png")))
    with open(os.path.join(folder, "summary.md"), "w", encoding="utf-8") as handle:
        handle.write(summary(runs))
    print("\n".join(written + [os.path.join(folder, "summary.md")]))
