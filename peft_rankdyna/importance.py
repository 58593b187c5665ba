"""Importance of singular groups: smoothed sensitivity times its uncertainty.

Per element θ of U, s and Vᵀ (AdaLoRA's estimator, applied to the SVD factors of the weight):

    I = |θ · ∂L/∂θ|                      sensitivity
    Ī ← β₁ Ī + (1 − β₁) I                smoothed sensitivity
    Ū ← β₂ Ū + (1 − β₂) |I − Ī|          uncertainty
    score = Ī · Ū

and a group i scores score(sᵢ) + mean score(U[:, i]) + mean score(Vᵀ[i, :]).

The statistics are buffers of an ``nn.Module`` so that they travel with ``state_dict()``: PEFT
adapter files and Trainer checkpoints carry them, and a resumed run continues from them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def ema_update(
    sensitivity: torch.Tensor,
    uncertainty: torch.Tensor,
    param: torch.Tensor,
    grad: torch.Tensor,
    beta1: float,
    beta2: float,
    active: torch.Tensor,
) -> None:
    """Update one tensor's statistics in place, only where ``active`` (broadcastable) is True.

    Written in place, the decay as a product by per-group factors (β where active, 1 where not) and the new
    terms zeroed where inactive, rather than computing both new tensors and selecting: it runs on every step
    over every factor, and this makes about 12 passes over the tensor with two temporaries instead of about
    14 with ten. The bits are those of the formulas above: x·β rounds as β·x does, and an inactive entry is
    x·1 + 0, whatever the gradient (the zeroing is a fill, not a product, so an overflowing ``param · grad``
    cannot turn it into NaN).
    """
    inactive = ~active
    keep1 = torch.where(active, beta1, 1.0).to(sensitivity.dtype)  # the dtype, not the default one, rounds β
    keep2 = torch.where(active, beta2, 1.0).to(uncertainty.dtype)
    instant = (param.detach().float() * grad.detach().float()).abs_()
    sensitivity.mul_(keep1).add_((instant * (1.0 - beta1)).masked_fill_(inactive, 0.0))
    uncertainty.mul_(keep2).add_(instant.sub_(sensitivity).abs_().mul_(1.0 - beta2).masked_fill_(inactive, 0.0))


class GroupImportance(nn.Module):
    """Importance statistics of the ``rank`` singular groups of one ``out × in`` matrix.

    Masked groups get no gradient (they are out of the forward pass), so their statistics are
    left as they were when they were masked, not decayed towards zero: that is what lets a pruned
    group win its place back at a later refresh when kept groups lose importance.
    """

    def __init__(self, rank: int, out_features: int, in_features: int) -> None:
        super().__init__()
        for factor, shape in (("U", (out_features, rank)), ("s", (rank,)), ("Vt", (rank, in_features))):
            self.register_buffer(f"sensitivity_{factor}", torch.zeros(shape, dtype=torch.float32))
            self.register_buffer(f"uncertainty_{factor}", torch.zeros(shape, dtype=torch.float32))

    def _apply(self, fn: Any, recurse: bool = True) -> "GroupImportance":
        # Statistics stay fp32 whatever the model's dtype: scores are of order 1e-13 and would underflow
        # to zero in half precision, leaving the allocation to tie order. Only the device follows `fn`.
        return super()._apply(lambda t: t.to(device=fn(t).device), recurse)

    @torch.no_grad()
    def update(
        self,
        U: nn.Parameter,
        s: nn.Parameter,
        Vt: nn.Parameter,
        active: torch.Tensor,
        beta1: float,
        beta2: float,
    ) -> None:
        """Fold the current gradients of the factors into the statistics of the active groups."""
        active = active.to(self.sensitivity_s.device)
        per_factor = (("U", U, active[None, :]), ("s", s, active), ("Vt", Vt, active[:, None]))
        for factor, param, where in per_factor:
            if param.grad is None:
                raise RuntimeError(
                    f"Factor {factor} has no gradient: update importance after backward() and before zero_grad(). "
                    "Under FSDP or DeepSpeed the gradients live in sharded buffers, which RankDyna does not read; "
                    "train with DDP instead."
                )
            ema_update(
                getattr(self, f"sensitivity_{factor}"),
                getattr(self, f"uncertainty_{factor}"),
                param,
                param.grad,
                beta1,
                beta2,
                where,
            )

    def scores(self) -> torch.Tensor:
        """One score per group: score(sᵢ) + mean score(U[:, i]) + mean score(Vᵀ[i, :])."""
        score_U = self.sensitivity_U * self.uncertainty_U
        score_s = self.sensitivity_s * self.uncertainty_s
        score_Vt = self.sensitivity_Vt * self.uncertainty_Vt
        return score_s + score_U.mean(dim=0) + score_Vt.mean(dim=1)
