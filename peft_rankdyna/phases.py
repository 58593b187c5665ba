"""Two options that give one RankDyna round what the two-round pipeline has (issue #21 §5).

FWSVD + FT truncates a model already fine-tuned to the task, then recovers in a whole second round
with a fresh learning-rate schedule. One RankDyna round can borrow either part:

- :func:`restarted_linear_schedule`: the learning rate warms up and decays to zero twice — over the
  steps before the final phase (warm-up and budget decrease), then again over the final phase, as
  a second round would;
- :func:`output_distance`: self-distillation — the model's own state at the end of the full-rank
  warm-up, frozen, teaches the model while its ranks fall (still one round, one model trained).

Nothing here imports the Trainer: :class:`peft_rankdyna.RankDynaTrainer` applies them.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F


def restarted_linear_schedule(total: int, restart: int, warmups: tuple[int, int]) -> Callable[[int], float]:
    """Learning-rate factor per step: linear warm-up over ``warmups[0]`` steps then linear decay to 0 over
    ``[0, restart)``, and the same over ``[restart, total)`` with ``warmups[1]`` warm-up steps (0: none)."""
    if not 0 < restart < total:
        raise ValueError(f"The restart step must lie inside the run: 0 < {restart} < {total}.")

    def segment(step: int, start: int, end: int, warmup: int) -> float:
        if step - start < warmup:
            return (step - start) / warmup
        return max(0.0, (end - step) / max(1, end - start - warmup))

    return lambda step: (segment(step, 0, restart, warmups[0]) if step < restart
                         else segment(step, restart, total, warmups[1]))


def output_distance(student: Any, teacher: Any, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """How far a model's outputs are from its frozen earlier self's, on the same inputs.

    Logits of one output (regression): mean squared difference. Logits over classes or a
    vocabulary: KL(teacher ‖ student) of their softmax, per example or per token (tokens where
    ``attention_mask`` is 0 left out). A sentence encoder's ``embeddings``: mean squared difference.
    """
    if getattr(student, "logits", None) is not None:
        logits, target = student.logits.float(), teacher.logits.float()
        if logits.shape[-1] == 1:
            return F.mse_loss(logits, target)
        divergence = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(target, -1), log_target=True,
                              reduction="none").sum(-1)
        if divergence.dim() == 2 and attention_mask is not None:  # per token: real tokens only
            mask = attention_mask.to(divergence.dtype)
            return (divergence * mask).sum() / mask.sum().clamp(min=1)
        return divergence.mean()
    if getattr(student, "embeddings", None) is not None:
        return F.mse_loss(student.embeddings.float(), teacher.embeddings.float())
    raise ValueError("Self-distillation compares `logits` or `embeddings`; the model's output has neither.")
