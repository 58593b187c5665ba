"""Truncated SVD at one uniform rank, into the compact model format."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import torch
from torch import nn

from ..budget import check_budget, matrix_cost
from ..compact import is_transformers_model, make_compact, truncate
from ..layer import svd_factors
from ..targets import default_target_names


def uniform_rank(shapes: Mapping[str, tuple[int, int]], budget: int) -> int:
    """The largest rank r such that all matrices truncated to r (at most their full rank) fit in ``budget``.

    Counted like RankDyna's budget (:func:`peft_rankdyna.budget.matrix_cost`).
    """
    full = max(min(shape) for shape in shapes.values())
    best = 0
    for rank in range(full + 1):
        if sum(matrix_cost(min(rank, min(o, i)), o, i) for o, i in shapes.values()) > budget:
            break
        best = rank
    return best


@torch.no_grad()
def factor_model(
    model: nn.Module,
    budget: float,
    target_modules: Optional[list[str]] = None,
    row_importance: Optional[Mapping[str, torch.Tensor]] = None,
    input_transform: Optional[Mapping[str, tuple[torch.Tensor, torch.Tensor]]] = None,
) -> nn.Module:
    """Replace every target Linear by its rank-r truncation, r uniform and chosen to meet ``budget``.

    Args:
        model: a (task-fine-tuned) model, modified in place: a transformers model is returned as compact,
            any other ``nn.Module`` with its targets truncated.
        budget: fraction (0, 1] of the target matrices' parameters to keep.
        target_modules: module names to factor (default: the model type's default targets).
        row_importance: per module name, one non-negative weight per output row. Given, the SVD is
            taken of diag(√I)·W and un-weighted after (FWSVD); absent, plain SVD.
        input_transform: per module name, ``(S, S⁻¹)`` (in × in). Given, the SVD is taken of W·S and
            ``Vᵀ`` multiplied by S⁻¹ after (ASVD scaling, SVD-LLM whitening: :mod:`.activations`).
    """
    check_budget(budget, "budget")
    names = target_modules or default_target_names(model)
    if not names:
        raise ValueError(f"No target modules found in {type(model).__name__}; pass `target_modules`.")
    shapes = {name: (model.get_submodule(name).out_features, model.get_submodule(name).in_features) for name in names}
    target = int(budget * sum(o * i for o, i in shapes.values()))
    rank = uniform_rank(shapes, target)
    ranks = {}
    for name in names:
        linear = model.get_submodule(name)
        weight = linear.weight.float()
        held = min(weight.shape)
        rows = None if row_importance is None else (
            row_importance[name].float().clamp_min(1e-12).sqrt().to(weight.device))
        S, S_inv = (None, None) if input_transform is None else (t.to(weight.device) for t in input_transform[name])
        weighted = weight if rows is None else rows[:, None] * weight
        U, s, Vt = svd_factors(weighted if S is None else weighted @ S, held)
        U = U if rows is None else U / rows[:, None]
        Vt = Vt if S_inv is None else Vt @ S_inv
        keep = torch.arange(held, device=weight.device) < rank
        parent_name, _, child = name.rpartition(".")
        module = truncate(U, s, Vt, keep, linear.bias).to(linear.weight.dtype)
        setattr(model.get_submodule(parent_name) if parent_name else model, child, module)
        ranks[name] = min(rank, held)
    return make_compact(model, ranks, target) if is_transformers_model(model) else model
