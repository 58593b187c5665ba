"""One optimizer step of RankDyna: the non-finite policy, importance updates, the scheduled refresh.

:class:`AllocationController` drives the layers of one model (it owns no modules): after every
optimizer step it skips steps with non-finite gradients, folds the gradients into the importance
statistics while the schedule tracks them, and at a refresh re-allocates the budget over all
matrices. The refresh that enforces the target runs at the first *finite* step of the final phase,
so a non-finite step there cannot leave the model over budget.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Optional

import torch

from .allocator import Allocation, allocate, allocate_per_matrix
from .budget import matrix_cost
from .config import RankDynaConfig
from .distributed import check_same_masks_on_all_ranks
from .layer import RankDynaLayer
from .targets import split_matrix_name


class AllocationController:
    """Importance tracking and budget allocation over the RankDyna layers of one model.

    Args:
        layers: returns the model's RankDyna layers by module name (looked up at each call, so the
            controller follows the model through moves and reloads).
        config: returns the adapter's config.
    """

    def __init__(self, layers: Callable[[], dict[str, RankDynaLayer]], config: Callable[[], RankDynaConfig]) -> None:
        self._layers, self._config = layers, config
        self.calls = 0
        self.nonfinite_streak = 0
        self.last_allocation: Optional[Allocation] = None
        self.last_budget: Optional[int] = None

    # ----------------------------------------------------------------------------- accounting
    def dense_params(self) -> int:
        """Parameters of the target matrices in the original dense model."""
        return sum(layer.out_features * layer.in_features for layer in self._layers().values())

    def initial_params(self) -> int:
        """Final-model parameters of the target matrices with every held group kept."""
        return sum(matrix_cost(layer.initial_rank, layer.out_features, layer.in_features)
                   for layer in self._layers().values())

    def target_params(self) -> int:
        """Parameter budget of the target matrices at the end of training."""
        return int(self._config().target_budget * self.dense_params())

    def kept_params(self) -> int:
        """Final-model parameters of the target matrices with the current masks."""
        return sum(matrix_cost(layer.rank, layer.out_features, layer.in_features) for layer in self._layers().values())

    # ----------------------------------------------------------------------------- one step
    def step(self, global_step: int) -> Optional[Allocation]:
        """See :meth:`peft_rankdyna.model.RankDynaModel.update_and_allocate`."""
        config = self._config()
        schedule = config.schedule()
        self.calls += 1
        layers = self._layers()
        if not gradients_finite(layers.values()):
            self.nonfinite_streak += 1
            warnings.warn(
                f"RankDyna: non-finite gradients at step {global_step}; importance not updated at this step.",
                stacklevel=3,
            )
            return None
        self.nonfinite_streak = 0
        # Past the start of the final phase with more kept than the target: the refresh that enforces
        # the target has not run yet (its step had non-finite gradients), so it runs now.
        target_pending = global_step >= schedule.final_start and self.kept_params() > self.target_params()
        if not (schedule.tracks_importance_at(global_step) or target_pending):
            return None
        if not (config.importance_updates == "frozen" and global_step >= schedule.tinit):
            for layer in layers.values():
                layer.update_importance(config.beta1, config.beta2)
        if not (schedule.refreshes_at(global_step) or target_pending):
            return None
        return self.allocate(schedule.budget(global_step, self.initial_params(), self.target_params()), global_step)

    def allocate(self, budget: int, global_step: int) -> Allocation:
        """Allocate ``budget`` from the current scores and apply the masks (checked across DDP processes)."""
        layers = self._layers()
        scores, shapes = scores_and_shapes(layers)
        if self._config().allocation == "per_matrix":
            initial = {name: matrix_cost(layer.initial_rank, *shapes[name]) for name, layer in layers.items()}
            allocation = allocate_per_matrix(scores, shapes, initial, budget)
        else:
            allocation = allocate(scores, shapes, budget)
        for name, layer in layers.items():
            layer.set_mask(allocation.masks[name])
        check_same_masks_on_all_ranks(allocation.masks, global_step)
        self.last_allocation, self.last_budget = allocation, budget
        return allocation

    def stats(self) -> dict[str, float]:
        """Budget, kept parameters, score threshold and per-layer ranks, ready for ``Trainer.log``."""
        dense, kept = self.dense_params(), self.kept_params()
        stats: dict[str, float] = {
            "rankdyna/budget_params": float(self.last_budget if self.last_budget is not None else self.initial_params()),
            "rankdyna/kept_params": float(kept),
            "rankdyna/kept_fraction": kept / dense,
            "rankdyna/threshold": self.last_allocation.threshold if self.last_allocation is not None else 0.0,
        }
        ranks = {name: layer.rank for name, layer in self._layers().items()}
        for layer_name, rank in ranks_by_layer(ranks).items():
            stats[f"rankdyna/rank/{layer_name}"] = float(rank)
        return stats


def scores_and_shapes(
    layers: dict[str, RankDynaLayer],
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, int]]]:
    """Group scores and ``(out, in)`` shapes per matrix, the allocator's inputs."""
    scores = {name: layer.group_scores() for name, layer in layers.items()}
    return scores, {name: (layer.out_features, layer.in_features) for name, layer in layers.items()}


def gradients_finite(layers: object) -> bool:
    """Whether every factor gradient is finite, read with one device synchronisation for all of them.

    It runs on every step, so it first sums each gradient in fp32 (one vectorised read; about a tenth of the
    time of ``isfinite(g).all()`` on the CPU): a finite sum means finite elements, since an infinite or NaN
    element makes the sum infinite or NaN. Only a non-finite sum, which a finite gradient can also give by
    overflowing, is checked element by element, at the cost of a second synchronisation.
    """
    grads = [p.grad for layer in layers for p in layer.factor_parameters() if p.grad is not None]
    if not grads:
        return True
    if bool(torch.isfinite(torch.stack([g.sum(dtype=torch.float32) for g in grads])).all()):
        return True
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


def ranks_by_layer(ranks: dict[str, int]) -> dict[str, int]:
    """Total kept rank per transformer layer (``layer_3``); matrices outside a layer list by name."""
    totals: dict[str, int] = {}
    for name, rank in ranks.items():
        layer, _ = split_matrix_name(name)
        key = name if layer is None else f"layer_{layer}"
        totals[key] = totals.get(key, 0) + rank
    return totals
