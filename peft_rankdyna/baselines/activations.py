"""Input statistics of the target matrices on calibration data, and the input transforms they give.

Activation-aware truncations factor ``W·S`` instead of ``W`` and undo ``S`` afterwards
(``W ≈ U_k Σ_k V_kᵀ S⁻¹``), so the truncation error is measured on the inputs the matrix sees:

- ASVD-style scaling (Yuan et al., 2023): ``S = diag(mean|x_j|^α)``, each input channel weighted by
  its mean magnitude to the power α (0.5, the paper's default);
- SVD-LLM-style whitening (Wang et al., 2024): ``S`` the Cholesky factor of the inputs' Gram matrix
  ``Σ x xᵀ``, so that ``‖(W − W′)S‖_F = ‖(W − W′)X‖_F``: truncating ``W·S`` minimises the output error
  on the calibration inputs exactly (the truncation-aware whitening).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

ASVD_ALPHA = 0.5
# Relative ridge added to the Gram matrix's diagonal so that its Cholesky factor exists even when some
# input direction never occurs in the calibration data (a dead channel).
WHITENING_RIDGE = 1e-6


@dataclass
class InputStatistics:
    """What the calibration inputs of one matrix were: mean |x_j| per channel, the Gram matrix, the count."""

    abs_sum: torch.Tensor
    gram: torch.Tensor
    tokens: int = 0

    def scaling(self, alpha: float = ASVD_ALPHA) -> tuple[torch.Tensor, torch.Tensor]:
        """ASVD's ``S`` and ``S⁻¹`` (diagonal, as full matrices)."""
        scale = (self.abs_sum / max(self.tokens, 1)).clamp_min(1e-8) ** alpha
        return torch.diag(scale), torch.diag(1.0 / scale)

    def whitening(self) -> tuple[torch.Tensor, torch.Tensor]:
        """SVD-LLM's ``S`` (lower Cholesky factor of the Gram matrix, ridged) and ``S⁻¹``."""
        gram = self.gram.double()
        ridge = WHITENING_RIDGE * float(gram.diagonal().mean().clamp_min(1e-12))
        S = torch.linalg.cholesky(gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device))
        eye = torch.eye(S.shape[0], dtype=S.dtype, device=S.device)
        return S.float(), torch.linalg.solve_triangular(S, eye, upper=False).float()


@torch.no_grad()
def input_statistics(forward_model: nn.Module, modules: Mapping[str, nn.Linear],
                     batches: Iterable[Mapping[str, Any]], gram: bool = True) -> dict[str, InputStatistics]:
    """Run ``forward_model`` on ``batches`` (dropout off, parameters unchanged) and gather the input statistics
    of ``modules`` (Linears inside it, by name).

    Padding positions (``attention_mask`` 0) are left out; so are ``labels``, since no loss is needed.
    ``gram=False`` skips the in × in Gram matrices (ASVD needs only the channel magnitudes).
    """
    stats = {name: InputStatistics(torch.zeros(m.in_features, device=m.weight.device),
                                   torch.zeros(m.in_features, m.in_features, device=m.weight.device) if gram
                                   else torch.zeros(0)) for name, m in modules.items()}
    mask: dict[str, torch.Tensor] = {}  # the current batch's token mask, flattened

    def hook(name: str) -> Any:
        def record(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            if "tokens" in mask and mask["tokens"].shape[0] == x.shape[0]:
                x = x[mask["tokens"]]
            entry = stats[name]
            entry.abs_sum += x.abs().sum(0)
            if gram:
                entry.gram += x.T @ x
            entry.tokens += x.shape[0]
        return record

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in modules.items()]
    was_training = forward_model.training
    forward_model.eval()
    try:
        for batch in batches:
            batch = {key: value for key, value in batch.items() if key != "labels"}
            if "attention_mask" in batch:
                mask["tokens"] = batch["attention_mask"].reshape(-1).bool()
            forward_model(**batch)
    finally:
        for handle in handles:
            handle.remove()
        forward_model.train(was_training)
    return stats


def input_transforms(stats: Mapping[str, InputStatistics], method: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``S`` and ``S⁻¹`` per matrix for ``method``: ``"asvd"`` (scaling) or ``"svdllm"`` (whitening)."""
    if method not in ("asvd", "svdllm"):
        raise ValueError(f"Unknown activation-aware method {method!r}; choose 'asvd' or 'svdllm'.")
    return {name: (entry.scaling() if method == "asvd" else entry.whitening()) for name, entry in stats.items()}
