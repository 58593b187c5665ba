"""Fisher row importance for FWSVD (Hsu et al., ICLR 2022)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn


def fisher_row_importance(
    model: nn.Module, batches: Iterable[Mapping[str, Any]], target_modules: list[str]
) -> dict[str, torch.Tensor]:
    """Accumulated squared gradients of the task loss, summed over each row of each target weight.

    One backward pass per batch (the batch's mean loss), dropout off; the model's parameters are
    not changed. FWSVD weights row j of W by √I_j before the SVD.
    """
    weights = {name: model.get_submodule(name).weight for name in target_modules}
    importance = {name: torch.zeros(w.shape[0], dtype=torch.float32, device=w.device) for name, w in weights.items()}
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            for name, weight in weights.items():
                importance[name] += weight.grad.detach().float().pow(2).sum(dim=1)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return importance
