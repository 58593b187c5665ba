"""The factored Linear: W = U · diag(s ⊙ mask) · Vᵀ, taken from the SVD of the pre-trained weight."""

from __future__ import annotations

import warnings
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .budget import initial_rank
from .compact import truncate
from .importance import GroupImportance

NO_DENSE_WEIGHT = (
    "RankDyna replaced this layer's weight by its SVD factors; there is no dense weight to fall back on, so the "
    "adapter cannot be disabled, merged in place or unmerged. Use `merge_and_unload()` for the compact model."
)


def check_linear(module: nn.Module, name: str) -> None:
    """RankDyna factors exactly ``torch.nn.Linear`` layers; anything else is a clear error naming ``name``."""
    if type(module).__name__ == "Conv1D":  # transformers' GPT-2 layout: x @ W + b with W stored in × out
        raise ValueError(
            f"Target module {name} is a transformers Conv1D (GPT-2's layers, weight stored in × out); RankDyna "
            "factors torch.nn.Linear layers only, so GPT-2-family models are not supported yet. Decoders with "
            "Linear projections (Llama, Mistral, Qwen2, Phi-3) are."
        )
    if type(module) is not nn.Linear:
        raise ValueError(
            f"Target module {name} is a {type(module).__name__}; RankDyna factors torch.nn.Linear layers only. "
            "Narrow `target_modules` to the Linear layers."
        )


def compose(U: torch.Tensor, s: torch.Tensor, Vt: torch.Tensor) -> torch.Tensor:
    """The dense matrix U · diag(s) · Vᵀ."""
    return (U * s) @ Vt


def matched_step_scale(weight: torch.Tensor) -> float:
    """How much to scale an Adam step on U and Vᵀ so the effective weight moves about as Adam moves it dense.

    Adam moves every element of a parameter by about the same amount. On the dense out×in weight W
    that is a relative change ∝ √(out·in)/‖W‖_F; on U (out×r) and Vᵀ (r×in) it changes W = U·diag(s)·Vᵀ
    through the singular values, by ∝ √out + √in relative to W (measured on MiniLM: 2–3× the dense
    step, `benchmarks/results/diagnosis`). The ratio of the two is this scale:
    √(out·in) / (‖W‖_F · √(out + in)).
    """
    norm = float(weight.detach().float().norm())
    out_features, in_features = weight.shape
    return (out_features * in_features) ** 0.5 / (norm * (out_features + in_features) ** 0.5) if norm > 0 else 1.0


def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-``rank`` SVD factors ``U, s, Vᵀ`` of ``weight``, computed in fp32."""
    U, s, Vt = torch.linalg.svd(weight.detach().float(), full_matrices=False)
    return U[:, :rank].contiguous(), s[:rank].contiguous(), Vt[:rank].contiguous()


class RankDynaLayer(nn.Module, BaseTunerLayer):
    """A target ``nn.Linear`` rewritten as trainable SVD factors with a mask over singular groups.

    The dense weight is dropped from ``base_layer`` (only its bias is kept and trained), so the
    factors are the only copy of the matrix. A masked group contributes nothing to the forward
    pass but keeps its values and importance statistics, so it can come back at a later refresh.

    ``U`` and ``Vᵀ`` are stored divided by a step scale ``c`` (``factor_step_scale``), and the
    forward multiplies the singular values by c² instead: the layer computes U·diag(s)·Vᵀ all the
    same, while an Adam step on the stored factors moves U and Vᵀ c times as far (importance is
    unaffected: θ·∂L/∂θ does not change under such a rescaling).

    The indices of the kept groups and the rank are cached whenever the mask changes (through
    :meth:`set_mask` or ``load_state_dict``), so a forward pass never reads the mask on the host:
    no device synchronisation per layer on CUDA, and no graph break under ``torch.compile``.

    ``state_dict()`` also holds ``base_layer.weight``: the dense weight the layer computes, under the
    original key, so ``peft.get_base_model_state_dict`` returns a complete base model. Loading it back
    checks that it matches the factors (RankDyna cannot take a new dense weight once factored).
    """

    adapter_layer_names = ("rankdyna_U", "rankdyna_s", "rankdyna_Vt")
    # Every other per-adapter container, so PEFT's own bookkeeping (adapter names, deletion) sees them all.
    other_param_names = ("rankdyna_mask", "rankdyna_kept", "rankdyna_step_scale", "rankdyna_importance")

    def __init__(self, base_layer: nn.Module, adapter_name: str, init_budget: Optional[float] = None,
                 factor_step_scale: Union[str, float] = 1.0) -> None:
        super().__init__()
        check_linear(base_layer, type(base_layer).__name__)
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.rankdyna_U = nn.ParameterDict()
        self.rankdyna_s = nn.ParameterDict()
        self.rankdyna_Vt = nn.ParameterDict()
        self.rankdyna_mask = BufferDict(persistent=True)
        self.rankdyna_kept = BufferDict(persistent=False)  # cache: indices of the kept groups
        self.rankdyna_step_scale = BufferDict(persistent=True)
        self.rankdyna_importance = nn.ModuleDict()
        self._rank: dict[str, int] = {}
        # The step scale c as a Python float: the fp32 buffer is rebuilt from it whenever the layer is cast.
        self._step_scale: dict[str, float] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        self.update_layer(adapter_name, init_budget, factor_step_scale)
        self._active_adapter = adapter_name
        self._loaded_dense_weight: Optional[tuple[str, torch.Tensor]] = None
        self.register_load_state_dict_pre_hook(_before_load)
        self.register_load_state_dict_post_hook(_after_load)
        self.register_state_dict_post_hook(_add_dense_weight)

    def update_layer(self, adapter_name: str, init_budget: Optional[float],
                     factor_step_scale: Union[str, float]) -> None:
        """Create the factors of ``adapter_name`` from the SVD of the base weight, then drop the weight.

        ``factor_step_scale`` is ``"matched"`` (:func:`matched_step_scale` of the weight) or a number."""
        weight = self.base_layer.weight
        rank = initial_rank(self.out_features, self.in_features, init_budget)
        U, s, Vt = svd_factors(weight, rank)
        scale = matched_step_scale(weight) if factor_step_scale == "matched" else float(factor_step_scale)
        dtype = weight.dtype
        self.rankdyna_U[adapter_name] = nn.Parameter((U / scale).to(dtype))
        self.rankdyna_s[adapter_name] = nn.Parameter(s.to(dtype))
        self.rankdyna_Vt[adapter_name] = nn.Parameter((Vt / scale).to(dtype))
        self._step_scale[adapter_name] = scale
        self.rankdyna_step_scale[adapter_name] = torch.tensor(scale, dtype=torch.float32, device=weight.device)
        self.rankdyna_mask[adapter_name] = torch.ones(rank, dtype=torch.bool, device=weight.device)
        self.rankdyna_importance[adapter_name] = GroupImportance(rank, self.out_features, self.in_features).to(
            weight.device
        )
        self._base_dtype = dtype
        # The factors are now the only copy of the matrix; keeping the dense weight would double memory.
        self.base_layer.weight = None
        self._refresh_kept(adapter_name)

    @property
    def _adapter(self) -> str:
        return self.active_adapters[0]

    @property
    def factor_step_scale(self) -> float:
        """The step scale c of the active adapter: ``U`` and ``Vᵀ`` are stored divided by it."""
        return self._step_scale[self._adapter]

    def _apply(self, fn: Any, recurse: bool = True) -> "RankDynaLayer":
        # `.to(bfloat16)` would round c (by up to 0.4 %) and with it every weight the layer computes:
        # whatever the cast, the step-scale buffers stay the exact fp32 value, on the new device.
        super()._apply(fn, recurse)
        for name, scale in self._step_scale.items():
            device = self.rankdyna_step_scale[name].device
            self.rankdyna_step_scale[name] = torch.tensor(scale, dtype=torch.float32, device=device)
        return self

    @property
    def initial_rank(self) -> int:
        """Number of singular groups held (kept or masked)."""
        return self.rankdyna_s[self._adapter].shape[0]

    @property
    def rank(self) -> int:
        """Number of singular groups currently kept (cached: reading it never synchronises)."""
        return self._rank[self._adapter]

    @property
    def mask(self) -> torch.Tensor:
        """Bool mask over the singular groups (True = kept). Change it with :meth:`set_mask` only."""
        return self.rankdyna_mask[self._adapter]

    def set_mask(self, mask: torch.Tensor) -> None:
        """Keep exactly the groups where ``mask`` is True; values and statistics are left untouched."""
        current = self.rankdyna_mask[self._adapter]
        if mask.shape != current.shape:
            raise ValueError(f"Mask of shape {tuple(mask.shape)} for a layer with {current.shape[0]} groups.")
        current.copy_(mask.to(device=current.device, dtype=torch.bool))
        self._refresh_kept(self._adapter)

    def _refresh_kept(self, adapter: Optional[str] = None) -> None:
        """Recompute the cached kept indices and rank from the mask (the one host read of the mask)."""
        for name in [adapter] if adapter is not None else list(self.rankdyna_mask):
            mask = self.rankdyna_mask[name]
            self.rankdyna_kept[name] = mask.nonzero().squeeze(1)
            self._rank[name] = int(self.rankdyna_kept[name].shape[0])

    def factor_parameters(self) -> tuple[nn.Parameter, nn.Parameter, nn.Parameter]:
        """The trainable parameters ``U/c, s, Vᵀ/c`` of the active adapter (s unmasked; c the step scale)."""
        adapter = self._adapter
        return self.rankdyna_U[adapter], self.rankdyna_s[adapter], self.rankdyna_Vt[adapter]

    def factors(self, kept_only: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The SVD factors ``U, s, Vᵀ`` (step scale undone) of all held groups, or of the kept ones only."""
        U, s, Vt = self.factor_parameters()
        scale = self.rankdyna_step_scale[self._adapter].to(U.dtype)
        U, Vt = U * scale, Vt * scale
        if not kept_only or self.rank == self.initial_rank:
            return U, s, Vt
        keep = self.rankdyna_kept[self._adapter]
        return U[:, keep], s[keep], Vt[keep]

    def _forward_factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``U/c, c²·s, Vᵀ/c`` of the kept groups: what the forward multiplies (the stored parameters themselves,
        so that their gradients are the ones Adam steps on).

        A masked group only adds exact zeros, so leaving it out computes the same output with FLOPs
        that shrink with the rank; its gradients are zero either way, and its values stay held.
        """
        U, s, Vt = self.factor_parameters()
        s = s * self.rankdyna_step_scale[self._adapter].to(s.dtype) ** 2
        if self.rank == self.initial_rank:
            return U, s, Vt
        keep = self.rankdyna_kept[self._adapter]
        return U[:, keep], s[keep], Vt[keep]

    def dense_weight(self) -> torch.Tensor:
        """The ``out × in`` weight the layer computes with (kept groups only), detached."""
        with torch.no_grad():
            return compose(*self._forward_factors()).to(self._base_dtype)

    @torch.no_grad()
    def rebase(self, S: torch.Tensor, S_inv: torch.Tensor) -> None:
        """Re-factor the layer's matrix W from the SVD of W·S, with Vᵀ multiplied by S⁻¹ after.

        With ``S`` the whitening of the layer's inputs (SVD-LLM's Cholesky factor of their Gram matrix,
        :func:`peft_rankdyna.baselines.input_transforms`), a group's singular value is what dropping it
        costs on those inputs, not on W alone: the order a truncation of W·x wants. The layer computes
        the same W (up to fp32 rounding through S⁻¹, which grows with S's condition number); only at full
        rank with no group masked (``init_budget=None``, before training). S is taken as given: with the
        Gram matrix of N calibration tokens summed, s grows as √N and Vᵀ·S⁻¹ shrinks as 1/√N, so the
        factors' scale, and with it what an Adam step does to them, depends on N (measured runs: N = 16,384).
        """
        adapter = self._adapter
        if self.initial_rank != min(self.out_features, self.in_features) or self.rank != self.initial_rank:
            raise ValueError("rebase needs the layer at full rank with no group masked: init_budget=None, before "
                             "training.")
        weight = compose(*(t.float() for t in self.factors()))
        U, s, Vt = svd_factors(weight @ S.to(weight), self.initial_rank)
        scale = self._step_scale[adapter]
        for param, value in zip(self.factor_parameters(), (U / scale, s, Vt @ S_inv.to(weight) / scale)):
            param.copy_(value.to(param.dtype))
        # Statistics gathered on the old groups describe other directions.
        self.rankdyna_importance[adapter] = GroupImportance(self.initial_rank, self.out_features,
                                                            self.in_features).to(weight.device)

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
        U, _, Vt = self.factors()
        eye = torch.eye(U.shape[1], device=U.device, dtype=U.dtype)
        return ((U.T @ U - eye) ** 2).sum() + ((Vt @ Vt.T - eye) ** 2).sum()

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        raise NotImplementedError(NO_DENSE_WEIGHT)

    def unmerge(self) -> None:
        raise NotImplementedError(NO_DENSE_WEIGHT)

    def unload_and_optionally_merge_module(
        self, merge: bool, safe_merge: bool = False, adapter_names: Optional[list[str]] = None
    ) -> nn.Module:
        """The truncated module of the kept groups (called by PEFT's ``merge_and_unload``), in the dtype the
        original weight had (PEFT trains the factors of a half-precision model in fp32)."""
        if not merge:
            raise ValueError(
                "RankDyna has no original dense weight to return: use `merge_and_unload()` for the compact model."
            )
        U, s, Vt = self.factors()
        return truncate(U, s, Vt, self.mask, self.base_layer.bias).to(self._base_dtype)

    def nonfinite_factors(self) -> list[str]:
        """Names of the factors (and the bias) holding NaN or infinite values."""
        U, s, Vt = self.factor_parameters()
        named = {"U": U, "s": s, "Vt": Vt, "bias": self.base_layer.bias}
        return [name for name, t in named.items() if t is not None and not bool(torch.isfinite(t).all())]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            raise RuntimeError(NO_DENSE_WEIGHT)
        U, s, Vt = self._forward_factors()
        result_dtype = x.dtype
        # A model loaded in half precision gets fp32 factors from PEFT; compute in the factors' dtype
        # (autocast still picks its own) and hand back the input's dtype, as PEFT's layers do.
        x = self._cast_input_dtype(x, U.dtype)
        bias = self._cast_input_dtype(self.base_layer.bias, U.dtype)
        tokens = x.numel() // self.in_features
        rank = s.shape[0]
        # Same product either way; pick the association with fewer FLOPs for this input.
        if tokens * rank * (self.in_features + self.out_features) < rank * self.out_features * self.in_features + (
            tokens * self.out_features * self.in_features
        ):
            result = F.linear((x @ Vt.T) * s, U, bias)
        else:
            result = F.linear(x, compose(U, s, Vt), bias)
        return result.to(result_dtype)

    def __repr__(self) -> str:
        return f"rankdyna.{super().__repr__()}"


def _add_dense_weight(module: RankDynaLayer, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    """State-dict hook: the weight the layer computes, under the original key ``base_layer.weight``."""
    state_dict[prefix + "base_layer.weight"] = module.dense_weight()


def _before_load(module: RankDynaLayer, state_dict: dict, prefix: str, *_: Any) -> None:
    """Load pre-hook: set a dense weight aside (there is no parameter for it) to check once the factors are in;
    give factors saved before the step scale existed (no step-scale tensor) their scale, c = 1."""
    weight = state_dict.pop(prefix + "base_layer.weight", None)
    module._loaded_dense_weight = None if weight is None else (prefix + "base_layer.weight", weight)
    for adapter in module.rankdyna_U:
        scale_key = f"{prefix}rankdyna_step_scale.{adapter}"
        if f"{prefix}rankdyna_U.{adapter}" in state_dict and scale_key not in state_dict:
            state_dict[scale_key] = torch.tensor(1.0, dtype=torch.float32)
            if not getattr(_before_load, "warned", False):
                _before_load.warned = True
                warnings.warn("RankDyna: these factors were saved before `factor_step_scale` existed (no step-scale "
                              "tensor): they are loaded as they were trained, with a step scale of 1.0.", stacklevel=2)


def _after_load(module: RankDynaLayer, _: Any) -> None:
    """Load post-hook: refresh the kept-group cache from the loaded mask, then check a loaded dense weight.

    A dense weight may come back (a state-dict round trip) only if it is what the loaded factors compute.
    """
    module._refresh_kept()
    module._step_scale = {name: float(scale) for name, scale in module.rankdyna_step_scale.items()}
    loaded, module._loaded_dense_weight = module._loaded_dense_weight, None
    if loaded is None:
        return
    key, weight = loaded
    expected = module.dense_weight()
    scale = float(expected.abs().max().clamp_min(1.0))
    if weight.shape != expected.shape or not torch.allclose(weight.to(expected), expected, rtol=1e-4, atol=1e-5 * scale):
        raise ValueError(
            f"The loaded {key} differs from what its RankDyna layer's factors compute. RankDyna holds "
            "the matrix as SVD factors and cannot take a new dense weight: load dense weights into the model "
            "before `get_peft_model`, or load a RankDyna adapter with `PeftModel.from_pretrained`."
        )
