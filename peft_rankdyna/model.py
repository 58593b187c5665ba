"""`RankDynaModel`: the PEFT tuner that swaps target Linears for factors and allocates ranks globally."""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from peft.tuners.tuners_utils import (
    AuxiliaryTrainingWrapper,
    BaseTuner,
    _get_tuner_state_dict_key_prefixes,
    _is_key_under_prefixes,
)
from torch import nn

from .allocator import Allocation, allocate, allocate_per_matrix, round_to_multiple
from .budget import matrix_cost
from .compact import make_compact
from .config import RankDynaConfig
from .layer import RankDynaLayer
from .targets import TRANSFORMERS_MODELS_TO_RANKDYNA_TARGET_MODULES_MAPPING, split_matrix_name


class RankDynaModel(BaseTuner):
    """Creates a RankDyna model from a pre-trained transformers model.

    Every target ``nn.Linear`` becomes a :class:`RankDynaLayer` holding the SVD factors of its
    weight. During training, :meth:`update_and_allocate` (called by ``RankDynaCallback``, or by a
    custom loop after ``optimizer.step()`` and before ``zero_grad()``) updates the importance of
    every singular group and, on the schedule, re-allocates one global parameter budget.

    Example:
        ```py
        >>> import peft_rankdyna  # registers RankDyna with PEFT
        >>> from peft import get_peft_model
        >>> from transformers import AutoModelForSequenceClassification
        >>> model = AutoModelForSequenceClassification.from_pretrained("path/to/bert")
        >>> model = get_peft_model(model, peft_rankdyna.RankDynaConfig(target_budget=0.5, total_step=1000))
        ```
    """

    prefix: str = "rankdyna_"
    tuner_layer_cls = RankDynaLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_RANKDYNA_TARGET_MODULES_MAPPING

    def __init__(self, model: nn.Module, config: Any, adapter_name: str = "default", **kwargs: Any) -> None:
        super().__init__(model, config, adapter_name, **kwargs)
        self._allocation_calls = 0
        self._training_forwards = 0
        self._warned_no_allocation = False
        self.nonfinite_streak = 0
        self.last_allocation: Optional[Allocation] = None
        self.last_budget: Optional[int] = None

    @property
    def rankdyna_config(self) -> RankDynaConfig:
        """The config of the (single) RankDyna adapter."""
        return self.peft_config[self.active_adapters[0]]

    # ----------------------------------------------------------------------------- injection
    def _check_new_adapter_config(self, config: RankDynaConfig) -> None:
        if len(self.peft_config) > 1:
            raise ValueError(
                "RankDyna replaces the weights themselves, so a model holds one RankDyna adapter only."
            )

    def _create_and_replace(
        self,
        peft_config: RankDynaConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs: Any,
    ) -> None:
        if isinstance(target, RankDynaLayer):
            raise ValueError(f"{current_key} is already a RankDyna layer.")
        if type(target) is not nn.Linear:
            raise ValueError(
                f"Target module {current_key} is a {type(target).__name__}; RankDyna factors torch.nn.Linear "
                "layers only. Narrow `target_modules` to the Linear layers."
            )
        self._replace_module(parent, target_name, RankDynaLayer(target, adapter_name, peft_config.init_budget), target)

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        # The factors are created on the weight's device already; the base class would look for the
        # (dropped) dense weight to move them.
        setattr(parent, child_name, new_module)

    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        super()._mark_only_adapters_as_trainable(model)
        config = self.rankdyna_config
        if config.train_base_model and not config.inference_mode:
            for _, param in _base_model_parameters(model):
                param.requires_grad = True

    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        if not enabled:
            raise ValueError(
                "RankDyna replaced the target weights by their factors; there is no dense weight to fall back on, "
                "so the adapter cannot be disabled."
            )

    @classmethod
    def _get_adapter_state_dict(
        cls,
        model: nn.Module,
        config: RankDynaConfig,
        adapter_name: str,
        state_dict: dict[str, torch.Tensor],
        unwanted_adapter_names: list[str],
    ) -> dict[str, torch.Tensor]:
        """The factors, masks and importance statistics, plus every non-target weight when it is trained."""
        to_return = super()._get_adapter_state_dict(model, config, adapter_name, state_dict, unwanted_adapter_names)
        if config.train_base_model:
            base_names = {name for name, _ in _base_model_entries(model, state_dict)}
            to_return.update({k: v for k, v in state_dict.items() if k in base_names})
        return to_return

    # ----------------------------------------------------------------------------- accounting
    def rankdyna_layers(self) -> dict[str, RankDynaLayer]:
        """Every RankDyna layer of the model, by module name."""
        return {name: m for name, m in self.model.named_modules() if isinstance(m, RankDynaLayer)}

    def dense_params(self) -> int:
        """Parameters of the target matrices in the original dense model."""
        return sum(layer.out_features * layer.in_features for layer in self.rankdyna_layers().values())

    def initial_params(self) -> int:
        """Final-model parameters of the target matrices with every held group kept."""
        return sum(
            matrix_cost(layer.initial_rank, layer.out_features, layer.in_features)
            for layer in self.rankdyna_layers().values()
        )

    def target_params(self) -> int:
        """Parameter budget of the target matrices at the end of training."""
        return int(self.rankdyna_config.target_budget * self.dense_params())

    def kept_params(self) -> int:
        """Final-model parameters of the target matrices with the current masks."""
        return sum(
            matrix_cost(layer.rank, layer.out_features, layer.in_features) for layer in self.rankdyna_layers().values()
        )

    def ranks(self) -> dict[str, int]:
        """Kept rank of every target matrix."""
        return {name: layer.rank for name, layer in self.rankdyna_layers().items()}

    # ----------------------------------------------------------------------------- allocation
    def update_and_allocate(self, global_step: int) -> Optional[Allocation]:
        """Update importance from the current gradients and, on the schedule, re-allocate the budget.

        Call after ``optimizer.step()`` and before ``optimizer.zero_grad()``, once per optimizer step
        (not per micro-batch under gradient accumulation). ``global_step`` is the 0-based index of
        the optimizer step just taken. Returns the new allocation when the mask was refreshed.
        Steps whose gradients are not finite are skipped with a warning and never enter the EMAs;
        ``nonfinite_streak`` counts how many such steps came in a row.
        """
        config = self.rankdyna_config
        schedule = config.schedule()
        self._allocation_calls += 1
        layers = self.rankdyna_layers()
        if not _gradients_finite(layers.values()):
            self.nonfinite_streak += 1
            warnings.warn(
                f"RankDyna: non-finite gradients at step {global_step}; importance not updated at this step.",
                stacklevel=2,
            )
            return None
        self.nonfinite_streak = 0
        if not schedule.tracks_importance_at(global_step):
            return None
        frozen = config.importance_updates == "frozen" and global_step >= schedule.tinit
        if not frozen:
            for layer in layers.values():
                layer.update_importance(config.beta1, config.beta2)
        if not schedule.refreshes_at(global_step):
            return None
        budget = schedule.budget(global_step, self.initial_params(), self.target_params())
        allocation = self._allocate(layers, budget)
        for name, layer in layers.items():
            layer.set_mask(allocation.masks[name])
        _check_same_masks_on_all_ranks(allocation.masks, global_step)
        self.last_allocation, self.last_budget = allocation, budget
        return allocation

    def _allocate(self, layers: dict[str, RankDynaLayer], budget: int) -> Allocation:
        scores, shapes = _scores_and_shapes(layers)
        if self.rankdyna_config.allocation == "per_matrix":
            initial = {name: matrix_cost(layer.initial_rank, *shapes[name]) for name, layer in layers.items()}
            return allocate_per_matrix(scores, shapes, initial, budget)
        return allocate(scores, shapes, budget)

    def allocation_stats(self) -> dict[str, float]:
        """Budget, kept parameters, score threshold and per-layer ranks, ready for ``Trainer.log``."""
        dense = self.dense_params()
        kept = self.kept_params()
        stats: dict[str, float] = {
            "rankdyna/budget_params": float(self.last_budget if self.last_budget is not None else self.initial_params()),
            "rankdyna/kept_params": float(kept),
            "rankdyna/kept_fraction": kept / dense,
            "rankdyna/threshold": self.last_allocation.threshold if self.last_allocation is not None else 0.0,
        }
        for layer_name, rank in _ranks_by_layer(self.ranks()).items():
            stats[f"rankdyna/rank/{layer_name}"] = float(rank)
        return stats

    # ----------------------------------------------------------------------------- merge
    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False,
                         adapter_names: Optional[list[str]] = None) -> nn.Module:
        """The compact model: a plain transformers model with every target matrix truncated to its kept groups.

        With ``rank_multiple`` set, ranks are first rounded down to multiples of it and the freed
        parameters re-spent globally (see :func:`~peft_rankdyna.allocator.round_to_multiple`).
        Like PEFT's own merge, this unwraps the base model: use the returned model afterwards.
        """
        multiple = self.rankdyna_config.rank_multiple
        if multiple:
            self.round_ranks(multiple)
        ranks = self.ranks()
        model = super().merge_and_unload(progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names)
        return make_compact(model, ranks)

    def round_ranks(self, multiple: int) -> None:
        """Round the current masks' ranks to multiples of ``multiple`` within the target budget."""
        layers = self.rankdyna_layers()
        scores, shapes = _scores_and_shapes(layers)
        masks = round_to_multiple(
            scores,
            shapes,
            {name: layer.mask for name, layer in layers.items()},
            max(self.target_params(), self.kept_params()),
            multiple,
        )
        for name, layer in layers.items():
            layer.set_mask(masks[name])

    # ----------------------------------------------------------------------------- forward
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        outputs = self.model.forward(*args, **kwargs)
        if not self.model.training:
            return outputs
        self._warn_if_not_allocating()
        weight = self.rankdyna_config.orth_reg_weight
        if weight > 0 and getattr(outputs, "loss", None) is not None:
            outputs.loss = outputs.loss + weight * self.orthogonality_penalty()
        return outputs

    def orthogonality_penalty(self) -> torch.Tensor:
        """Sum over target matrices of ‖UᵀU − I‖²_F + ‖VᵀV − I‖²_F."""
        return torch.stack([layer.orthogonality_penalty() for layer in self.rankdyna_layers().values()]).sum()

    def _warn_if_not_allocating(self) -> None:
        self._training_forwards += 1
        if self._allocation_calls or self._warned_no_allocation:
            return
        config = self.rankdyna_config
        if config.total_step is not None:
            warmup = config.schedule().tinit
        else:
            warmup = config.tinit if isinstance(config.tinit, int) else 0
        if self._training_forwards > warmup:
            self._warned_no_allocation = True
            warnings.warn(
                f"RankDyna: {self._training_forwards} training forward passes and no `update_and_allocate` call: "
                "importance is not tracked and no rank will be pruned. Add `RankDynaCallback` to your Trainer, or "
                "call `model.update_and_allocate(step)` after `optimizer.step()` in your loop.",
                stacklevel=3,
            )


def _scores_and_shapes(
    layers: dict[str, RankDynaLayer],
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, int]]]:
    """Group scores and ``(out, in)`` shapes per matrix, the allocator's inputs."""
    scores = {name: layer.group_scores() for name, layer in layers.items()}
    return scores, {name: (layer.out_features, layer.in_features) for name, layer in layers.items()}


def _check_same_masks_on_all_ranks(masks: dict[str, torch.Tensor], step: int) -> None:
    """Under torch.distributed, fail loudly if the processes' allocations differ (they must not)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if torch.distributed.get_world_size() == 1:
        return
    # One fingerprint per matrix: which groups are kept, as a position-weighted sum.
    fingerprint = torch.stack(
        [(mask.double() * torch.arange(1, len(mask) + 1, dtype=torch.float64)).sum() for mask in masks.values()]
    )
    backend_device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    fingerprint = fingerprint.to(backend_device)
    gathered = [torch.empty_like(fingerprint) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(gathered, fingerprint)
    for rank, other in enumerate(gathered):
        if not torch.equal(other, gathered[0]):
            name = list(masks)[int((other != gathered[0]).nonzero()[0])]
            raise RuntimeError(
                f"RankDyna: the rank allocation diverged between processes at step {step} (process {rank} differs "
                f"from process 0 first at {name}). Importance must come from synchronised gradients: wrap the "
                "model in DistributedDataParallel and call update_and_allocate after optimizer.step()."
            )


def _gradients_finite(layers: Any) -> bool:
    grads = [p.grad for layer in layers for p in layer.factor_parameters()]
    return all(g is None or bool(torch.isfinite(g).all()) for g in grads)


def _base_model_entries(model: nn.Module, entries: dict[str, Any]) -> list[tuple[str, Any]]:
    """Entries (parameters or state-dict tensors) of the base model: neither RankDyna's nor PEFT auxiliaries'."""
    tuner_prefixes = _get_tuner_state_dict_key_prefixes(model)
    aux_prefixes = {name for name, module in model.named_modules() if isinstance(module, AuxiliaryTrainingWrapper)}
    return [
        (name, value)
        for name, value in entries.items()
        if not _is_key_under_prefixes(name, tuner_prefixes) and not _is_key_under_prefixes(name, aux_prefixes)
    ]


def _base_model_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return _base_model_entries(model, dict(model.named_parameters()))


def _ranks_by_layer(ranks: dict[str, int]) -> dict[str, int]:
    """Total kept rank per transformer layer (``layer_3``); matrices outside a layer list by name."""
    totals: dict[str, int] = {}
    for name, rank in ranks.items():
        layer, _ = split_matrix_name(name)
        key = name if layer is None else f"layer_{layer}"
        totals[key] = totals.get(key, 0) + rank
    return totals
