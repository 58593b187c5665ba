"""Global, cost-aware choice of singular groups under one parameter budget.

All matrices of all layers compete for one budget. A group is worth its importance score per
parameter it costs, so a group of a wide FFN matrix (in + out + 1 parameters) has to earn more
than a group of a square attention matrix. Pure tensor math: no PEFT, no Trainer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .budget import break_even_rank, group_cost, matrix_cost


@dataclass
class Allocation:
    """The result of one allocation.

    Attributes:
        masks: per matrix name, a bool vector over its groups (True = kept).
        threshold: importance-per-parameter of the best group that did not fit (0.0 if all fit).
        kept_params: parameters the kept groups cost in the final model.
    """

    masks: dict[str, torch.Tensor]
    threshold: float
    kept_params: int

    @property
    def ranks(self) -> dict[str, int]:
        """Kept rank per matrix."""
        return {name: int(mask.sum()) for name, mask in self.masks.items()}


def allocate(
    scores: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, int]], budget: int
) -> Allocation:
    """Choose the groups to keep so that the final model's target matrices fit in ``budget`` parameters.

    Greedy by importance per parameter of cost. Within a matrix every group costs the same, so the
    greedy order visits a matrix's groups best-first and the cost of its j-th group is known up
    front: ``matrix_cost(j) - matrix_cost(j - 1)``, which drops to 0 past the rank at which the
    matrix is stored dense. A matrix that reaches that rank therefore keeps all its groups for free.

    Matrices are visited in name order and ties are broken stably, so the result does not depend
    on the order of ``scores``.

    Args:
        scores: per matrix name, one non-negative score per singular group.
        shapes: per matrix name, its ``(out_features, in_features)``.
        budget: parameters allowed for all target matrices together.
    """
    names = sorted(scores)
    ratios, increments, owners, positions = [], [], [], []
    for owner, name in enumerate(names):
        out_f, in_f = shapes[name]
        score = scores[name].detach().float().cpu()
        order = torch.argsort(score, descending=True, stable=True)
        ranks = torch.arange(1, len(score) + 1)
        dense = out_f * in_f
        cost = group_cost(out_f, in_f)
        increments.append((ranks * cost).clamp(max=dense) - ((ranks - 1) * cost).clamp(max=dense))
        ratios.append(score[order] / cost)
        owners.append(torch.full((len(score),), owner))
        positions.append(order)
    ratio = torch.cat(ratios)
    increment = torch.cat(increments)
    owner = torch.cat(owners)
    position = torch.cat(positions)

    visit = torch.argsort(ratio, descending=True, stable=True)
    fits = torch.cumsum(increment[visit], 0) <= budget
    n_kept = int(fits.sum())  # cumulative cost is monotone, so what fits is a prefix
    threshold = float(ratio[visit[n_kept]]) if n_kept < len(visit) else 0.0

    masks = {name: torch.zeros(len(scores[name]), dtype=torch.bool) for name in names}
    kept = visit[:n_kept]
    for owner_id, name in enumerate(names):
        masks[name][position[kept[owner[kept] == owner_id]]] = True
        out_f, in_f = shapes[name]
        if int(masks[name].sum()) >= break_even_rank(out_f, in_f):
            masks[name][:] = True  # stored dense: the remaining groups cost nothing
    kept_params = sum(matrix_cost(int(m.sum()), *shapes[n]) for n, m in masks.items())
    return Allocation(masks=masks, threshold=threshold, kept_params=kept_params)


def allocate_per_matrix(
    scores: Mapping[str, torch.Tensor],
    shapes: Mapping[str, tuple[int, int]],
    initial_costs: Mapping[str, int],
    budget: int,
) -> Allocation:
    """Ablation of the global competition: every matrix keeps the same fraction of its initial cost.

    Importance still chooses *which* groups a matrix keeps, but not how many: matrix ``m`` gets
    ``budget / sum(initial_costs) * initial_costs[m]`` parameters, spent on its best groups.
    """
    fraction = min(1.0, budget / max(1, sum(initial_costs.values())))
    masks, kept, thresholds = {}, 0, []
    for name in sorted(scores):
        single = allocate({name: scores[name]}, {name: shapes[name]}, int(fraction * initial_costs[name]))
        masks[name] = single.masks[name]
        kept += single.kept_params
        thresholds.append(single.threshold)
    return Allocation(masks=masks, threshold=max(thresholds, default=0.0), kept_params=kept)


def round_to_multiple(
    scores: Mapping[str, torch.Tensor],
    shapes: Mapping[str, tuple[int, int]],
    masks: Mapping[str, torch.Tensor],
    budget: int,
    multiple: int,
) -> dict[str, torch.Tensor]:
    """Round every factored matrix's rank down to a multiple of ``multiple``, then re-spend what that freed.

    Matrices stored dense (rank at or past break-even) are left alone. The freed parameters go back,
    ``multiple`` groups at a time, to the matrix whose next best groups earn the most importance
    per parameter, while the total stays within ``budget``.
    """
    names = sorted(masks)
    order = {n: _kept_first_best_first(scores[n], masks[n]) for n in names}
    ranks: dict[str, int] = {}
    for name in names:
        rank = int(masks[name].sum())
        dense = rank >= break_even_rank(*shapes[name])
        ranks[name] = rank if dense else rank - rank % multiple
    held = {n: len(masks[n]) for n in names}

    def spent() -> int:
        return sum(matrix_cost(ranks[n], *shapes[n]) for n in names)

    while True:
        best, best_value = None, -1.0
        for name in names:
            rank = ranks[name]
            if rank >= break_even_rank(*shapes[name]) or rank + multiple > held[name]:
                continue
            extra = matrix_cost(rank + multiple, *shapes[name]) - matrix_cost(rank, *shapes[name])
            if spent() + extra > budget:
                continue
            gain = float(scores[name].detach().float().cpu()[order[name][rank : rank + multiple]].sum()) / max(extra, 1)
            if gain > best_value:
                best, best_value = name, gain
        if best is None:
            break
        ranks[best] += multiple

    result = {}
    for name in names:
        keep = torch.zeros(held[name], dtype=torch.bool)
        rank = held[name] if ranks[name] >= break_even_rank(*shapes[name]) else ranks[name]
        keep[order[name][:rank]] = True
        result[name] = keep
    return result


def _kept_first_best_first(score: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Group indices: the kept groups best-first, then the masked ones best-first."""
    by_score = torch.argsort(score.detach().float().cpu(), descending=True, stable=True)
    return by_score[torch.argsort((~mask.cpu()[by_score]).int(), stable=True)]
