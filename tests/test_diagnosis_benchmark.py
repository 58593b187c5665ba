"""benchmarks/diagnosis.py: the exact allocation against brute force, and the figures from run records."""

import itertools
import json

import pytest
import torch
from conftest import load_benchmark

diagnosis = load_benchmark("diagnosis")
plots = load_benchmark("diagnosis_plots")


def test_exact_allocation_is_the_brute_force_optimum():
    from peft_rankdyna.budget import matrix_cost

    generator = torch.Generator().manual_seed(0)
    shapes = {"a": (4, 4), "b": (8, 4), "c": (4, 2)}
    scores = {name: torch.rand(min(shape), generator=generator) for name, shape in shapes.items()}
    budget = 30
    ranks, value = diagnosis.exact_allocation(scores, shapes, budget)
    best = max((sum(float(scores[n].sort(descending=True).values[:r].sum()) for n, r in zip(shapes, choice)), choice)
               for choice in itertools.product(*(range(min(s) + 1) for s in shapes.values()))
               if sum(matrix_cost(r, *shapes[n]) for n, r in zip(shapes, choice)) <= budget)
    assert value == pytest.approx(best[0]) and tuple(ranks[n] for n in shapes) == best[1]


def _record(label, seed, metric):
    return {"label": label, "variant": "rankdyna", "task": "cola", "seed": seed, "budget": 0.5, "options": {},
            "final_metrics": {"matthews_correlation": metric}, "wall_time_s": 1.0, "command": f"python x {label}",
            "curve": [{"step": 100, "dev_loss": 0.6, "matthews_correlation": 0.0, "top_class_share": 1.0},
                      {"step": 200, "dev_loss": 0.5, "matthews_correlation": metric, "top_class_share": 0.8}],
            "loss": [{"step": 50, "loss": 0.6}, {"step": 100, "loss": 0.5}], "updates": {}, "refreshes": []}


def test_plots_read_only_run_records_and_colour_a_variant_alike_in_every_panel(tmp_path, monkeypatch):
    import matplotlib.figure

    for label, seed, metric in [("a", 42, 0.2), ("b", 42, 0.1), ("b", 43, 0.15)]:
        (tmp_path / f"{label}-s{seed}.json").write_text(json.dumps(_record(label, seed, metric)))
    (tmp_path / "allocation_check_x.json").write_text(json.dumps({"gap": 0.0}))  # not a run: skipped
    runs = plots.load_runs(str(tmp_path))
    assert [(r["label"], r["seed"]) for r in runs] == [("a", 42), ("b", 42), ("b", 43)]
    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda figure, path, **kw: saved.append(figure))
    plots.plot_curves(runs, "cola", str(tmp_path / "curves.png"))
    colours = {}
    for axis in saved[0].axes:
        for line in axis.get_lines():
            colours.setdefault(line.get_label(), set()).add(line.get_color())
    assert set(colours) == {"a", "b"} and all(len(c) == 1 for c in colours.values()) and colours["a"] != colours["b"]
    assert "| cola | b | 43 | 0.1500 | 200 |" in plots.summary(runs)
