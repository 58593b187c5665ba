"""Pictures of an allocation: the final rank heat map and the budget/rank history (matplotlib optional)."""

from __future__ import annotations

from typing import Any, Sequence

from ..accounting import MatrixRow
from ..targets import KIND_ORDER, split_matrix_name


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend; a clear error when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("Plots need matplotlib: pip install 'peft-rankdyna[plot]'.") from None
    return plt


def _kinds(names: Sequence[str]) -> list[str]:
    present = {split_matrix_name(name)[1] for name in names}
    return [k for k in KIND_ORDER if k in present] + sorted(present - set(KIND_ORDER))


def plot_rank_heatmap(rows: Sequence[MatrixRow], path: str, title: str = "Kept rank per matrix") -> str:
    """Layers × matrix kinds; colour = kept fraction of the matrix's parameters, number = kept rank."""
    plt = pyplot()
    kinds = _kinds([row.name for row in rows])
    layers = sorted({row.layer for row in rows if row.layer is not None})
    grid = [[float("nan")] * len(kinds) for _ in layers]
    ranks: dict[tuple[int, int], int] = {}
    for row in rows:
        if row.layer is None:
            continue
        i, j = layers.index(row.layer), kinds.index(row.kind)
        grid[i][j], ranks[(i, j)] = row.kept_fraction, row.rank
    figure, axes = plt.subplots(figsize=(1.3 * len(kinds) + 2, 0.55 * len(layers) + 1.5))
    image = axes.imshow(grid, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for (i, j), rank in ranks.items():
        axes.text(j, i, str(rank), ha="center", va="center", color="white" if grid[i][j] < 0.6 else "black")
    axes.set_xticks(range(len(kinds)), kinds)
    axes.set_yticks(range(len(layers)), [f"layer {layer}" for layer in layers])
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label="kept fraction of parameters")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_history(history: Sequence[dict[str, Any]], dense_params: int, path: str) -> str:
    """Budget and kept parameters (fraction of dense) and total rank per matrix kind over training steps."""
    plt = pyplot()
    steps = [entry["step"] for entry in history]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(steps, [e["budget"] / dense_params for e in history], label="budget", drawstyle="steps-post")
    top.plot(steps, [e["kept_params"] / dense_params for e in history], "--", label="kept",
             drawstyle="steps-post")
    top.set_ylabel("fraction of dense parameters")
    top.legend()
    kinds = _kinds(list(history[0]["ranks"])) if history else []
    for kind in kinds:
        totals = [sum(r for n, r in e["ranks"].items() if split_matrix_name(n)[1] == kind) for e in history]
        bottom.plot(steps, totals, label=kind, drawstyle="steps-post")
    bottom.set_xlabel("optimizer step")
    bottom.set_ylabel("total rank over layers")
    bottom.legend(ncol=3, fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_curve(points: Sequence[dict[str, Any]], path: str) -> str:
    """Each dev metric over optimizer steps, one panel per metric; a second training round continues the axis."""
    plt = pyplot()
    metrics = [name for name in points[0] if name not in ("round", "step", "collapsed")]
    offsets: dict[int, int] = {}
    end = 0
    for point in points:  # a round's steps start where the one before it ended
        offset = offsets.setdefault(point["round"], end)
        end = max(end, point["step"] + offset)
    figure, axes = plt.subplots(len(metrics), 1, figsize=(7, 2.2 * len(metrics) + 0.8), sharex=True, squeeze=False)
    for axis, metric in zip(axes[:, 0], metrics):
        for round_ in sorted(offsets):
            chosen = [p for p in points if p["round"] == round_]
            axis.plot([p["step"] + offsets[round_] for p in chosen], [p[metric] for p in chosen], "o-", markersize=3,
                      label=f"round {round_ + 1}" if len(offsets) > 1 else None)
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
    if len(offsets) > 1:
        axes[0, 0].legend()
    axes[-1, 0].set_xlabel("optimizer step")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
