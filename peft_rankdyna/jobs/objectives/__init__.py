"""What a job trains for: one module per objective, one interface (:class:`~.base.Objective`), found by name.

Adding an objective is a module with an ``Objective`` subclass and one entry in :data:`OBJECTIVES`;
the runner does not change.
"""

from __future__ import annotations

from .base import Objective, Scores
from .causal_lm import CausalLM
from .classification import Classification
from .embedding_distillation import EmbeddingDistillation

OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (Classification, EmbeddingDistillation, CausalLM)}


def get_objective(name: str) -> type[Objective]:
    """The objective class called ``name``; a clear error naming the choices otherwise."""
    if name not in OBJECTIVES:
        raise ValueError(f"Unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}.")
    return OBJECTIVES[name]


__all__ = ["OBJECTIVES", "Objective", "Scores", "get_objective"]
