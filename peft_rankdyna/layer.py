"""The factored Linear: W = U · diag(s ⊙ mask) · Vᵀ, taken from the SVD of the pre-trained weight."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .budget import initial_rank
from .compact import truncate
from .importance import GroupImportance


def compose(U: torch.Tensor, s: torch.Tensor, Vt: torch.Tensor) -> torch.Tensor:
    """The dense matrix U · diag(s) · Vᵀ."""
    return (U * s) @ Vt


def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-``rank`` SVD factors ``U, s, Vᵀ`` of ``weight``, computed in fp32."""
    U, s, Vt = torch.linalg.svd(weight.detach().float(), full_matrices=False)
    return U[:, :rank].contiguous(), s[:rank].contiguous(), Vt[:rank].contiguous()


class RankDynaLayer(nn.Module, BaseTunerLayer):
    """A target ``nn.Linear`` rewritten as trainable SVD factors with a mask over singular groups.

    The dense weight is dropped from ``base_layer`` (only its bias is kept and trained), so the
    factors are the only copy of the matrix. A masked group contributes nothing to the forward
    pass but keeps its values and importance statistics, so it can come back at a later refresh.
    """

    adapter_layer_names = ("rankdyna_U", "rankdyna_s", "rankdyna_Vt")
    other_param_names = ("rankdyna_mask", "rankdyna_importance")

    def __init__(self, base_layer: nn.Module, adapter_name: str, init_budget: Optional[float] = None) -> None:
        super().__init__()
        if type(base_layer) is not nn.Linear:
            raise ValueError(
                f"RankDyna factors torch.nn.Linear layers only, got {type(base_layer).__name__}. "
                "Remove it from `target_modules` or name the Linear layers inside it."
            )
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.rankdyna_U = nn.ParameterDict()
        self.rankdyna_s = nn.ParameterDict()
        self.rankdyna_Vt = nn.ParameterDict()
        self.rankdyna_mask = BufferDict(persistent=True)
        self.rankdyna_importance = nn.ModuleDict()
        self._disable_adapters = False
        self.merged_adapters = []
        self.update_layer(adapter_name, init_budget)
        self._active_adapter = adapter_name

    def update_layer(self, adapter_name: str, init_budget: Optional[float]) -> None:
        """Create the factors of ``adapter_name`` from the SVD of the base weight, then drop the weight."""
        weight = self.base_layer.weight
        rank = initial_rank(self.out_features, self.in_features, init_budget)
        U, s, Vt = svd_factors(weight, rank)
        dtype = weight.dtype
        self.rankdyna_U[adapter_name] = nn.Parameter(U.to(dtype))
        self.rankdyna_s[adapter_name] = nn.Parameter(s.to(dtype))
        self.rankdyna_Vt[adapter_name] = nn.Parameter(Vt.to(dtype))
        self.rankdyna_mask[adapter_name] = torch.ones(rank, dtype=torch.bool, device=weight.device)
        self.rankdyna_importance[adapter_name] = GroupImportance(rank, self.out_features, self.in_features).to(
            weight.device
        )
        # The factors are now the only copy of the matrix; keeping the dense weight would double memory.
        self.base_layer.weight = None

    @property
    def _adapter(self) -> str:
        return self.active_adapters[0]

    @property
    def initial_rank(self) -> int:
        """Number of singular groups held (kept or masked)."""
        return self.rankdyna_s[self._adapter].shape[0]

    @property
    def rank(self) -> int:
        """Number of singular groups currently kept."""
        return int(self.rankdyna_mask[self._adapter].sum())

    @property
    def mask(self) -> torch.Tensor:
        """Bool mask over the singular groups (True = kept)."""
        return self.rankdyna_mask[self._adapter]

    def set_mask(self, mask: torch.Tensor) -> None:
        """Keep exactly the groups where ``mask`` is True; values and statistics are left untouched."""
        current = self.rankdyna_mask[self._adapter]
        if mask.shape != current.shape:
            raise ValueError(f"Mask of shape {tuple(mask.shape)} for a layer with {current.shape[0]} groups.")
        current.copy_(mask.to(device=current.device, dtype=torch.bool))

    def factor_parameters(self) -> tuple[nn.Parameter, nn.Parameter, nn.Parameter]:
        """The trainable ``U, s, Vᵀ`` of the active adapter (s unmasked)."""
        adapter = self._adapter
        return self.rankdyna_U[adapter], self.rankdyna_s[adapter], self.rankdyna_Vt[adapter]

    def factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``U, s ⊙ mask, Vᵀ`` of the active adapter."""
        U, s, Vt = self.factor_parameters()
        return U, s * self.rankdyna_mask[self._adapter].to(s.dtype), Vt

    def kept_factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``U, s, Vᵀ`` of the kept groups only.

        A masked group only adds exact zeros, so leaving it out computes the same output with FLOPs
        that shrink with the rank; its gradients are zero either way, and its values stay held.
        """
        U, s, Vt = self.factor_parameters()
        mask = self.rankdyna_mask[self._adapter]
        if bool(mask.all()):
            return U, s, Vt
        keep = mask.nonzero().squeeze(1)
        return U[:, keep], s[keep], Vt[keep]

    def effective_weight(self) -> torch.Tensor:
        """The dense ``out × in`` weight the layer currently computes with."""
        return compose(*self.factors())

    def update_importance(self, beta1: float, beta2: float) -> None:
        """Fold the current gradients into the importance statistics of the kept groups."""
        adapter = self._adapter
        self.rankdyna_importance[adapter].update(
            *self.factor_parameters(), self.rankdyna_mask[adapter], beta1, beta2
        )

    def group_scores(self) -> torch.Tensor:
        """Current importance score of every singular group, kept or masked."""
        return self.rankdyna_importance[self._adapter].scores()

    def orthogonality_penalty(self) -> torch.Tensor:
        """‖UᵀU − I‖²_F + ‖VᵀV − I‖²_F over all held groups."""
        U, _, Vt = self.factor_parameters()
        eye = torch.eye(U.shape[1], device=U.device, dtype=U.dtype)
        return ((U.T @ U - eye) ** 2).sum() + ((Vt @ Vt.T - eye) ** 2).sum()

    def unload_and_optionally_merge_module(
        self, merge: bool, safe_merge: bool = False, adapter_names: Optional[list[str]] = None
    ) -> nn.Module:
        """The truncated module of the kept groups (called by PEFT's ``merge_and_unload``)."""
        if not merge:
            raise ValueError(
                "RankDyna has no original dense weight to return: use `merge_and_unload()` for the compact model."
            )
        U, s, Vt = self.factor_parameters()
        return truncate(U, s, Vt, self.mask, self.base_layer.bias)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            raise RuntimeError(
                "RankDyna replaced this layer's weight by its factors; there is no dense weight to fall back "
                "on, so adapters cannot be disabled."
            )
        U, s, Vt = self.kept_factors()
        tokens = x.numel() // self.in_features
        rank = s.shape[0]
        # Same product either way; pick the association with fewer FLOPs for this input.
        if tokens * rank * (self.in_features + self.out_features) < rank * self.out_features * self.in_features + (
            tokens * self.out_features * self.in_features
        ):
            return F.linear((x @ Vt.T) * s, U, self.base_layer.bias)
        return F.linear(x, compose(U, s, Vt), self.base_layer.bias)

    def __repr__(self) -> str:
        return f"rankdyna.{super().__repr__()}"
