"""`RankDynaModel`: the PEFT tuner that swaps target Linears for factors and allocates ranks globally."""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Optional

import torch
from peft.tuners.tuners_utils import (
    AuxiliaryTrainingWrapper,
    BaseTuner,
    _ExcludedModule,
    _get_tuner_state_dict_key_prefixes,
    _is_key_under_prefixes,
)
from torch import nn

from .allocator import Allocation, round_to_multiple
from .compact import is_transformers_model, make_compact
from .config import RankDynaConfig
from .controller import AllocationController, scores_and_shapes
from .layer import NO_DENSE_WEIGHT, RankDynaLayer, check_linear
from .targets import TRANSFORMERS_MODELS_TO_RANKDYNA_TARGET_MODULES_MAPPING


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
        self.controller = AllocationController(self.rankdyna_layers, lambda: self.rankdyna_config)
        super().__init__(model, config, adapter_name, **kwargs)
        self._training_forwards = 0
        self._warned_no_allocation = False

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

    def _prepare_model(self, peft_config: RankDynaConfig, model: nn.Module) -> None:
        # Called by PEFT before any module is replaced: refuse a bad target while the model is untouched.
        for key, module in model.named_modules():
            result = self._check_target_module_exists(peft_config, key) if key else False
            if result and not isinstance(result, _ExcludedModule) and not isinstance(module, RankDynaLayer):
                check_linear(module, key)

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
        check_linear(target, current_key)
        layer = RankDynaLayer(target, adapter_name, peft_config.init_budget,
                              factor_step_scale=peft_config.factor_step_scale)
        self._replace_module(parent, target_name, layer, target)

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

    def delete_adapter(self, adapter_name: str) -> None:
        """Refused: a RankDyna adapter's factors are the only copy of its target matrices (there is one adapter)."""
        raise ValueError(
            f"RankDyna cannot delete adapter {adapter_name!r}: it replaced the target matrices by their factors, "
            "so deleting it would throw those weights away. Use `merge_and_unload()` for the compact model, or "
            "load the base model again."
        )

    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        if not enabled:
            raise ValueError(NO_DENSE_WEIGHT)

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
            # Every base entry but the dense weights the RankDyna layers report (their factors are saved).
            base_names = {name for name, _ in _base_model_entries(model, state_dict)}
            dense = {f"{name}.base_layer.weight" for name, m in model.named_modules() if isinstance(m, RankDynaLayer)}
            to_return.update({k: v for k, v in state_dict.items() if k in base_names and k not in dense})
        return to_return

    # ----------------------------------------------------------------------------- accounting
    def rankdyna_layers(self) -> dict[str, RankDynaLayer]:
        """Every RankDyna layer of the model, by module name."""
        return {name: m for name, m in self.model.named_modules() if isinstance(m, RankDynaLayer)}

    def rebase_factors(self, transforms: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Re-factor every target from the SVD of W·S (``transforms``: per module name ``(S, S⁻¹)``, e.g.
        SVD-LLM's whitening from :func:`peft_rankdyna.baselines.input_transforms`); see
        :meth:`RankDynaLayer.rebase`. Call it after ``get_peft_model``, before training."""
        layers = self.rankdyna_layers()
        missing = sorted(set(layers) - set(transforms))
        if missing:
            raise ValueError(f"No input transform for {len(missing)} target(s), e.g. {missing[0]!r}.")
        for name, layer in layers.items():
            layer.rebase(*transforms[name])

    def dense_params(self) -> int:
        """Parameters of the target matrices in the original dense model."""
        return self.controller.dense_params()

    def initial_params(self) -> int:
        """Final-model parameters of the target matrices with every held group kept."""
        return self.controller.initial_params()

    def target_params(self) -> int:
        """Parameter budget of the target matrices at the end of training."""
        return self.controller.target_params()

    def kept_params(self) -> int:
        """Final-model parameters of the target matrices with the current masks."""
        return self.controller.kept_params()

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
        ``nonfinite_streak`` counts how many such steps came in a row. The target budget is enforced
        at the first finite step of the final phase.
        """
        return self.controller.step(global_step)

    def allocate_to_target(self) -> Allocation:
        """Allocate the target budget now from the current scores (what the final refresh does)."""
        return self.controller.allocate(self.target_params(), global_step=-1)

    @property
    def nonfinite_streak(self) -> int:
        """Optimizer steps in a row, up to the last one, whose gradients were not finite."""
        return self.controller.nonfinite_streak

    @property
    def last_allocation(self) -> Optional[Allocation]:
        """The allocation of the last mask refresh (None before the first)."""
        return self.controller.last_allocation

    @property
    def last_budget(self) -> Optional[int]:
        """The budget of the last mask refresh (None before the first)."""
        return self.controller.last_budget

    def allocation_stats(self) -> dict[str, float]:
        """Budget, kept parameters, score threshold and per-layer ranks, ready for ``Trainer.log``."""
        return self.controller.stats()

    # ----------------------------------------------------------------------------- merge
    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False,
                         adapter_names: Optional[list[str]] = None) -> nn.Module:
        """The compact model: the base model with every target matrix truncated to its kept groups.

        For a transformers model it is the compact model (same class, compact save format); any other
        ``nn.Module`` comes back with its targets truncated. With ``rank_multiple`` set, ranks are first
        rounded down to multiples of it and the freed parameters re-spent globally (see
        :func:`~peft_rankdyna.allocator.round_to_multiple`). Everything is checked before anything
        changes: a model over its target budget (the final refresh never ran) and, with
        ``safe_merge=True``, non-finite factors are errors that leave the model as it was.
        Like PEFT's own merge, this unwraps the base model: use the returned model afterwards.
        """
        kept, target = self.kept_params(), self.target_params()
        if kept > target:
            raise ValueError(
                f"RankDyna: the target matrices keep {kept:,} parameters, over the target budget of {target:,} "
                "(target_budget × dense): the final refresh has not run (training stopped before the final phase). "
                "Train to the end, or call `allocate_to_target()` on the RankDyna model before merging."
            )
        if safe_merge:
            broken = [f"{name} ({', '.join(bad)})" for name, layer in self.rankdyna_layers().items()
                      if (bad := layer.nonfinite_factors())]
            if broken:
                raise ValueError(f"NaNs or infinities detected in the weights to merge: {'; '.join(broken)}. "
                                 f"The adapter {self.active_adapters[0]!r} seems to be broken.")
        if self.rankdyna_config.rank_multiple:
            self.round_ranks(self.rankdyna_config.rank_multiple)
        ranks, target = self.ranks(), self.target_params()
        model = super().merge_and_unload(progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names)
        return make_compact(model, ranks, target) if is_transformers_model(model) else model

    def round_ranks(self, multiple: int) -> None:
        """Round the current masks' ranks to multiples of ``multiple`` within the target budget."""
        layers = self.rankdyna_layers()
        scores, shapes = scores_and_shapes(layers)
        masks = round_to_multiple(
            scores, shapes, {name: layer.mask for name, layer in layers.items()}, self.target_params(), multiple
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
        if self.controller.calls or self._warned_no_allocation:
            return
        config = self.rankdyna_config
        if config.total_step is not None:
            warmup = config.schedule().tinit
        else:
            warmup = config.tinit if isinstance(config.tinit, int) else 0
        if self._training_forwards > warmup + 1:  # the first step's forward comes before the first call
            self._warned_no_allocation = True
            warnings.warn(
                f"RankDyna: {self._training_forwards} training forward passes and no `update_and_allocate` call: "
                "importance is not tracked and no rank will be pruned. Add `RankDynaCallback` to your Trainer, or "
                "call `model.update_and_allocate(step)` after `optimizer.step()` in your loop.",
                stacklevel=3,
            )


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


def find_rankdyna_model(model: nn.Module) -> Optional[RankDynaModel]:
    """The :class:`RankDynaModel` in ``model``: the model itself, the one in a ``PeftModel``, or the one in any
    module wrapping such a model (a sentence encoder, say); None when there is none."""
    return next((module for module in model.modules() if isinstance(module, RankDynaModel)), None)
