"""Parameter accounting and the cubic budget schedule.

Pure functions on integers: no torch, no PEFT, no Trainer. Everything here is counted in
parameters of the *final* (merged) model, which is what a user compresses for: a matrix of rank r
merges into ``in → r`` and ``r → out`` Linears, r·(in + out) weights (the singular values are folded
into them), or into one dense ``in × out`` Linear where that is no larger. This module is the one
definition of that cost; the allocator, the compact model and the reports all use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

StepSpec = Union[int, float]
"""An ``int`` is a number of optimizer steps; a ``float`` in [0, 1) is a fraction of the total."""


def check_budget(value: float, name: str = "target_budget") -> float:
    """A budget is a fraction in (0, 1] of the target matrices' dense parameters; anything else is an error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ValueError(f"`{name}` must be a fraction in (0, 1] of the target matrices' parameters, got {value!r}.")
    return float(value)


def group_cost(out_features: int, in_features: int) -> int:
    """Final-model parameters one singular group costs: a column of U and a row of diag(s)·Vᵀ."""
    return out_features + in_features


def matrix_cost(rank: int, out_features: int, in_features: int) -> int:
    """Parameters a matrix of this rank costs in the final model.

    A matrix whose factors would be larger than its dense weight is stored dense, so its cost is
    capped at ``out_features * in_features``.
    """
    return min(rank * group_cost(out_features, in_features), out_features * in_features)


def break_even_rank(out_features: int, in_features: int) -> int:
    """Smallest rank at which storing the matrix dense is no larger than storing its factors."""
    return math.ceil(out_features * in_features / group_cost(out_features, in_features))


def initial_rank(out_features: int, in_features: int, init_budget: float | None) -> int:
    """Rank the factors start at: full rank, or the largest rank costing ≤ ``init_budget`` × dense."""
    full = min(out_features, in_features)
    if init_budget is None:
        return full
    affordable = math.floor(init_budget * out_features * in_features / group_cost(out_features, in_features))
    return max(1, min(full, affordable))


def resolve_steps(value: StepSpec, total_step: int, name: str) -> int:
    """Turn a step count or a fraction of ``total_step`` into a number of steps."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"`{name}` must be an int (steps) or a float fraction in [0, 1), got {value!r}.")
    if isinstance(value, float):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"`{name}` as a fraction of the total steps must be in [0, 1), got {value}.")
        return int(round(value * total_step))
    if value < 0:
        raise ValueError(f"`{name}` must be ≥ 0 steps, got {value}.")
    return value


@dataclass(frozen=True)
class Schedule:
    """A resolved budget schedule, all in optimizer steps.

    Steps ``[0, tinit)`` are the warm-up at the initial budget, ``[tinit, total_step - tfinal)``
    the cubic decrease with a mask refresh every ``deltaT`` steps, and the last ``tfinal`` steps
    the final phase with the mask frozen at the target budget.
    """

    total_step: int
    tinit: int
    tfinal: int
    deltaT: int

    @classmethod
    def build(cls, tinit: StepSpec, tfinal: StepSpec, deltaT: StepSpec, total_step: int) -> "Schedule":
        """Resolve fractions against ``total_step`` and reject schedules that cannot run."""
        if isinstance(total_step, bool) or not isinstance(total_step, int) or total_step <= 0:
            raise ValueError(f"`total_step` must be a positive int, got {total_step!r}.")
        warmup = resolve_steps(tinit, total_step, "tinit")
        final = resolve_steps(tfinal, total_step, "tfinal")
        refresh = resolve_steps(deltaT, total_step, "deltaT")
        if refresh <= 0:
            raise ValueError(f"`deltaT` must resolve to ≥ 1 step, got {deltaT!r} of {total_step} total steps.")
        if warmup + max(final, 1) >= total_step:
            raise ValueError(
                f"Infeasible schedule: warm-up tinit={tinit!r} ({warmup} steps) + final phase tfinal={tfinal!r} "
                f"({final} steps) = {warmup + final} steps leaves no step to prune in within "
                f"total_step={total_step}. Lower tinit or tfinal, or train longer."
            )
        return cls(total_step=total_step, tinit=warmup, tfinal=final, deltaT=refresh)

    @property
    def final_start(self) -> int:
        """First step of the final phase (mask frozen from here on); at the latest the last step, so the
        target is always reached."""
        return self.total_step - max(self.tfinal, 1)

    def fraction_kept(self, step: int) -> float:
        """Where the budget stands between initial (1.0) and target (0.0) at ``step``: cubic in between."""
        if step < self.tinit:
            return 1.0
        if step >= self.final_start:
            return 0.0
        progress = (step - self.tinit) / (self.final_start - self.tinit)
        return (1.0 - progress) ** 3

    def budget(self, step: int, initial: int, target: int) -> int:
        """Parameter budget at ``step``, monotone non-increasing from ``initial`` to ``target``."""
        return target + int((initial - target) * self.fraction_kept(step))

    def refreshes_at(self, step: int) -> bool:
        """Whether the mask is re-allocated after optimizer step ``step``.

        Every ``deltaT`` steps from the end of the warm-up, and once more at the first step of the
        final phase so the frozen mask meets the target exactly.
        """
        if step == self.final_start:
            return True
        return self.tinit <= step < self.final_start and (step - self.tinit) % self.deltaT == 0

    def tracks_importance_at(self, step: int) -> bool:
        """Importance is only needed until the mask is frozen."""
        return step <= self.final_start
