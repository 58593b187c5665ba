"""Why one-round compression can collapse: curves, update sizes, importance scores and allocations.

One run trains a model exactly as ``rankdyna compress`` does (same Trainer, same settings) with a
:class:`Diagnostics` callback that records, every few steps:

- the training loss and the dev metric, and the share of dev examples given the most frequent
  predicted class (1.0 = the model predicts one class);
- the update size of every target matrix's effective weight, ‖W_after − W_before‖_F / ‖W_before‖_F
  for one optimizer step (W = U·diag(s⊙m)·Vᵀ for RankDyna, the dense weight otherwise);
- for RankDyna models, at every mask refresh: the scale of the importance scores per matrix kind and
  layer, how stable the ranking of groups is from one refresh to the next (Spearman), the allocation
  the scores would give at the target budget (and its overlap with the previous one and the final
  one), the kept ranks and the largest one-refresh drop of any matrix.

    python benchmarks/diagnosis.py run --model $MODEL --task cola --variant dense --seed 43
    python benchmarks/diagnosis.py run --model $MODEL --task cola --variant fullrank --seed 43
    python benchmarks/diagnosis.py run --model $MODEL --task cola --variant rankdyna --seed 43 [--set key=value]
    python benchmarks/diagnosis.py plot            # -> benchmarks/results/diagnosis/*.png (docs/results.md shows them)

Variants: ``dense`` (plain fine-tuning), ``fullrank`` (the factored model at target_budget=1.0:
nothing is ever pruned) and ``rankdyna`` (budget ``--budget``, default 0.5). ``--set`` passes
RankDynaConfig fields (``--set tinit=0.3``), and ``--label`` names the run in the plots.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from typing import Any, Optional

import torch
from transformers import DataCollatorWithPadding, TrainerCallback

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "diagnosis")
VARIANTS = ("dense", "fullrank", "rankdyna")


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two score vectors (0.0 when either is constant)."""
    ra = torch.argsort(torch.argsort(a)).double()
    rb = torch.argsort(torch.argsort(b)).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denominator if denominator > 0 else 0.0


def short_name(name: str) -> str:
    """``bert.encoder.layer.3.intermediate.dense`` → ``L3 FFN in`` (keeps the records small)."""
    from peft_rankdyna.targets import split_matrix_name

    layer, kind = split_matrix_name(name)
    return name if layer is None else f"L{layer} {kind}"


def jaccard(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Overlap of two allocations (sets of kept groups over all matrices)."""
    inter = sum(int((a[n] & b[n]).sum()) for n in a)
    union = sum(int((a[n] | b[n]).sum()) for n in a)
    return inter / union if union else 1.0


class Diagnostics(TrainerCallback):
    """Records the curves and statistics described in the module docstring into ``self.record``."""

    def __init__(self, task: Any, dev: Any, tokenizer: Any, eval_every: int, update_every: int,
                 target_budget: float) -> None:
        self.task, self.eval_every, self.update_every, self.target_budget = task, eval_every, update_every, target_budget
        self.loader = torch.utils.data.DataLoader(dev, batch_size=64, collate_fn=DataCollatorWithPadding(tokenizer))
        self.record: dict[str, list] = {"curve": [], "loss": [], "updates": [], "refreshes": []}
        self._before: dict[str, torch.Tensor] = {}
        self._masks: dict[str, torch.Tensor] = {}
        self._previous: Optional[dict[str, Any]] = None
        self.rankdyna = None

    # ------------------------------------------------------------------ effective weights
    def _matrices(self, model: torch.nn.Module) -> dict[str, torch.nn.Module]:
        from peft_rankdyna.layer import RankDynaLayer
        from peft_rankdyna.targets import default_target_names

        layers = {short_name(n): m for n, m in model.named_modules() if isinstance(m, RankDynaLayer)}
        if layers:
            return layers
        names = set(default_target_names(model))
        return {short_name(n): m for n, m in model.named_modules() if n in names}

    @staticmethod
    def _weight(module: torch.nn.Module, mask: Optional[torch.Tensor]) -> torch.Tensor:
        if mask is None:
            return module.weight.detach().float().clone()
        U, s, Vt = (t.detach().float() for t in module.factors())
        return (U * (s * mask)) @ Vt

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from peft_rankdyna.model import RankDynaModel

        base = getattr(model, "base_model", None)
        self.rankdyna = base if isinstance(base, RankDynaModel) else None
        self.matrices = self._matrices(model)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if state.global_step % self.update_every:
            return
        for name, module in self.matrices.items():
            mask = module.mask.float() if self.rankdyna is not None else None
            self._masks[name] = mask
            self._before[name] = self._weight(module, mask)

    def on_optimizer_step(self, args, state, control, **kwargs):
        step = state.global_step
        if self._before:
            sizes = {}
            for name, module in self.matrices.items():
                before = self._before[name]
                after = self._weight(module, self._masks[name])
                sizes[name] = round(float((after - before).norm() / before.norm().clamp_min(1e-12)), 9)
            self.record["updates"].append({"step": step, "relative_update": sizes})
            self._before.clear()
        if self.rankdyna is not None and self.rankdyna.rankdyna_config.schedule().refreshes_at(step):
            self.record["refreshes"].append(self._refresh_stats(step))

    def _refresh_stats(self, step: int) -> dict[str, Any]:
        from peft_rankdyna.allocator import allocate

        layers = {short_name(n): layer for n, layer in self.rankdyna.rankdyna_layers().items()}
        scores = {n: layer.group_scores().detach().float().cpu() for n, layer in layers.items()}
        shapes = {n: (layer.out_features, layer.in_features) for n, layer in layers.items()}
        target = int(self.target_budget * self.rankdyna.dense_params())
        would_keep = allocate(scores, shapes, target).masks
        ranks = {n: layer.rank for n, layer in layers.items()}
        stats: dict[str, Any] = {
            "step": step,
            "kept_params": self.rankdyna.kept_params(),
            "ranks": ranks,
            "score_sum": {n: float(s.sum()) for n, s in scores.items()},
            "score_median": {n: float(s.median()) for n, s in scores.items()},
            "score_max": {n: float(s.max()) for n, s in scores.items()},
            "would_keep_at_target": {n: int(m.sum()) for n, m in would_keep.items()},
        }
        if self._previous is not None:
            stats["spearman_vs_previous"] = {n: spearman(scores[n], self._previous["scores"][n]) for n in scores}
            stats["target_allocation_jaccard_vs_previous"] = jaccard(would_keep, self._previous["would_keep"])
            stats["rank_drop"] = {n: self._previous["ranks"][n] - ranks[n] for n in ranks}
        self._previous = {"scores": scores, "would_keep": would_keep, "ranks": ranks}
        self.record.setdefault("_would_keep", []).append(would_keep)
        return stats

    # ------------------------------------------------------------------ loss and dev metric
    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.record["loss"].append({"step": state.global_step, "loss": logs["loss"]})

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.eval_every == 0 or state.global_step == state.max_steps:
            self.record["curve"].append({"step": state.global_step, **self.evaluate(model)})

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Dev metric, dev loss and the share of the most frequent predicted class."""
        from peft_rankdyna.jobs.data.labelled import compute_metrics

        was_training = model.training
        model.eval()
        logits, labels, loss = [], [], 0.0
        device = next(model.parameters()).device
        for batch in self.loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            output = model(**batch)
            loss += float(output.loss) * len(batch["labels"])
            logits.append(output.logits.float().cpu())
            labels.append(batch["labels"].cpu())
        model.train(was_training)
        logits, labels = torch.cat(logits), torch.cat(labels)
        metrics = compute_metrics(self.task, logits.numpy(), labels.numpy())
        result = {"dev_loss": loss / len(labels), **{k: float(v) for k, v in metrics.items()}}
        if not self.task.is_regression:
            counts = Counter(logits.argmax(-1).tolist())
            result["top_class_share"] = max(counts.values()) / len(labels)
        return result

    def finish(self) -> dict[str, Any]:
        """The record, with the overlap of every refresh's target allocation with the last one."""
        would_keep = self.record.pop("_would_keep", [])
        for stats, masks in zip(self.record["refreshes"], would_keep):
            stats["target_allocation_jaccard_vs_final"] = jaccard(masks, would_keep[-1])
        return self.record


def run(args: argparse.Namespace) -> str:
    from peft_rankdyna.config import RankDynaConfig
    from peft_rankdyna.jobs.data.glue import get_task, load_glue
    from peft_rankdyna.jobs.data.labelled import TokenizedSplit
    from peft_rankdyna.io import portable_command
    from peft_rankdyna.loading import load_tokenizer
    from peft_rankdyna.jobs import CompressSettings, compress

    overrides = {key: _parse_value(value) for key, value in (item.split("=", 1) for item in args.set)}
    budget = {"dense": None, "fullrank": 1.0, "rankdyna": args.budget}[args.variant]
    if budget is not None:
        RankDynaConfig(target_budget=budget, **overrides)  # fail on a bad option before loading anything
    label = args.label or f"{args.task}-{args.variant}" + (f"-{args.budget:g}" if args.variant == "rankdyna" else "")
    name = f"{label}-s{args.seed}"
    settings = CompressSettings(model=args.model, task=args.task, output_dir=os.path.join(args.work_dir, name),
                                budget=budget, seed=args.seed, glue_dir=args.glue_dir, rankdyna=overrides,
                                learning_rate=args.lr, epochs=args.epochs, show_progress=False)
    task = get_task(args.task)
    tokenizer = load_tokenizer(args.model)
    dev = TokenizedSplit(tokenizer, load_glue(task, "dev", args.glue_dir), settings.max_seq_length)
    diagnostics = Diagnostics(task, dev, tokenizer, args.eval_every, args.update_every,
                              target_budget=args.budget)
    results = compress(settings, callbacks=[diagnostics])
    record = {
        "label": label, "variant": args.variant, "task": args.task, "seed": args.seed, "budget": budget,
        "options": overrides, "final_metrics": results["metrics"], "wall_time_s": results["wall_time_s"],
        "command": "python benchmarks/diagnosis.py " + portable_command(
            sys.argv[1:], {args.model: "$MODEL", args.glue_dir: "$GLUE_DIR", args.out: "$OUT", args.work_dir: "$WORK_DIR"}),
        **diagnostics.finish(),
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{name}.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)
    print(f"{name}: {results['metrics']} -> {path}")
    return path


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def exact_allocation(scores: dict[str, torch.Tensor], shapes: dict[str, tuple[int, int]], budget: int
                     ) -> tuple[dict[str, int], float]:
    """The ranks that keep the most total score within ``budget`` (best groups first in every matrix), exactly.

    A knapsack over matrices solved by dynamic programming on budget units of the greatest common
    divisor of all costs (384 parameters for MiniLM): the optimum of the objective the greedy allocator
    approximates, to tell its choices around the dense cap from what the scores ask for.
    """
    import math

    import numpy as np

    from peft_rankdyna.budget import matrix_cost

    names = sorted(scores)
    costs = {n: [matrix_cost(r, *shapes[n]) for r in range(len(scores[n]) + 1)] for n in names}
    unit = 0
    for n in names:
        for c in costs[n]:
            unit = math.gcd(unit, c)
    units = budget // unit
    best = np.zeros(units + 1)
    choice = {}
    for n in names:
        values = np.concatenate([[0.0], np.cumsum(np.sort(scores[n].double().numpy())[::-1])])
        table = np.full((len(values), units + 1), -np.inf)
        for r, (value, cost) in enumerate(zip(values, costs[n])):
            k = cost // unit
            if k <= units:
                table[r, k:] = best[: units + 1 - k] + value
        choice[n] = table.argmax(0)
        best = table.max(0)
    ranks, remaining = {}, units
    for n in reversed(names):
        r = int(choice[n][remaining])
        ranks[n] = r
        remaining -= costs[n][r] // unit
    return ranks, float(best[units])


def adapter_scores(adapter_dir: str) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, int]]]:
    """Group scores and shapes of every matrix from a saved RankDyna adapter's importance statistics."""
    from safetensors.torch import load_file

    weights = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    scores, shapes = {}, {}
    for key in weights:
        if key.endswith("rankdyna_importance.sensitivity_s"):
            prefix = key[: -len("sensitivity_s")]
            name = short_name(key.split(".rankdyna_importance")[0].removeprefix("base_model.model."))
            stats = {k: weights[prefix + k].double() for k in
                     ("sensitivity_U", "uncertainty_U", "sensitivity_s", "uncertainty_s", "sensitivity_Vt", "uncertainty_Vt")}
            scores[name] = (stats["sensitivity_s"] * stats["uncertainty_s"]
                            + (stats["sensitivity_U"] * stats["uncertainty_U"]).mean(0)
                            + (stats["sensitivity_Vt"] * stats["uncertainty_Vt"]).mean(1))
            shapes[name] = (stats["sensitivity_U"].shape[0], stats["sensitivity_Vt"].shape[1])
    return scores, shapes


def check_allocation(args: argparse.Namespace) -> dict[str, Any]:
    """Greedy against exact allocation of a saved adapter's final scores at ``args.budget``."""
    from peft_rankdyna.allocator import allocate
    from peft_rankdyna.io import portable_command

    scores, shapes = adapter_scores(args.adapter)
    budget = int(args.budget * sum(o * i for o, i in shapes.values()))
    greedy = allocate(scores, shapes, budget)
    greedy_value = sum(float(scores[n][m].sum()) for n, m in greedy.masks.items())
    exact, exact_value = exact_allocation(scores, shapes, budget)
    record = {"adapter": os.path.basename(os.path.normpath(args.adapter)), "budget": args.budget,
              "greedy_ranks": greedy.ranks, "exact_ranks": exact, "greedy_value": greedy_value,
              "exact_value": exact_value, "gap": 1 - greedy_value / exact_value if exact_value else 0.0,
              "matrices_that_differ": sorted(n for n in exact if exact[n] != greedy.ranks[n]),
              "command": "python " + portable_command(sys.argv, {
                  os.path.dirname(os.path.dirname(os.path.normpath(args.adapter))): "$RUNS"})}
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)
    print(f"greedy keeps {greedy_value:.4e} of score, the exact optimum {exact_value:.4e} "
          f"(gap {record['gap']:.2%}) -> {args.out}")
    return record


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train one variant with the diagnostics callback")
    r.add_argument("--model", required=True)
    r.add_argument("--task", default="cola")
    r.add_argument("--variant", choices=VARIANTS, required=True)
    r.add_argument("--budget", type=float, default=0.5)
    r.add_argument("--seed", type=int, default=42)
    r.add_argument("--lr", type=float, default=5e-5)
    r.add_argument("--epochs", type=float, default=3.0)
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a RankDynaConfig field")
    r.add_argument("--label", default=None)
    r.add_argument("--eval-every", type=int, default=100)
    r.add_argument("--update-every", type=int, default=10)
    r.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR"))
    r.add_argument("--work-dir", default="runs/diagnosis")
    r.add_argument("--out", default=RESULTS)
    a = sub.add_parser("allocation", help="greedy vs exact allocation of a saved adapter's final scores")
    a.add_argument("adapter")
    a.add_argument("--budget", type=float, default=0.5)
    a.add_argument("--out", required=True)
    p = sub.add_parser("plot", help="draw the figures and the summary from the recorded runs")
    p.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args)
    elif args.command == "allocation":
        check_allocation(args)
    else:
        from diagnosis_plots import plot_all

        plot_all(args.out)


if __name__ == "__main__":
    main()

