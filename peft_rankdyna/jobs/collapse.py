"""Is a trained model a result, or has it collapsed onto the class prior? A check on its dev predictions.

A classifier that gives every dev example the same label scores exactly what predicting the
majority class scores (CoLA's Matthews correlation 0.0, MRPC's F1 0.81), which can look like a
number. :func:`check_collapse` compares the model with that constant predictor and says so loudly;
:func:`check_embedding_collapse` does the same for a distilled embedding model (one vector for every text).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

SINGLE_CLASS_SHARE = 0.99  # share of dev examples given the most frequent label, at or above which it is one class
MARGIN = 0.005  # a metric must beat the majority-class predictor's by more than this to count as learned
CONSTANT_SPREAD = 0.01  # regression: predictions spread less than this fraction of the labels' spread


@dataclass
class CollapseReport:
    """What the dev predictions say about a trained model.

    Attributes:
        collapsed: the model predicts one class (or a constant), or no metric beats the majority-class predictor.
        top_class_share: share of dev examples given the most frequent predicted label (None for regression).
        majority_baseline: the metrics of always predicting the most frequent dev label (None for regression).
        message: one line for a human, empty when the model did not collapse.
    """

    collapsed: bool
    top_class_share: Optional[float] = None
    majority_baseline: Optional[dict[str, float]] = None
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_collapse(
    predictions: np.ndarray,
    labels: np.ndarray,
    metrics: dict[str, float],
    metric_fn: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    regression: bool = False,
) -> CollapseReport:
    """Check dev ``predictions`` (logits, or scores for regression) of a model whose dev ``metrics`` are given.

    ``metric_fn(predictions, labels)`` computes the same metrics; it scores the majority-class predictor.
    """
    labels = np.asarray(labels)
    if regression:
        scores = np.asarray(predictions, dtype=float).reshape(-1)
        spread, label_spread = float(scores.std()), float(labels.std())
        collapsed = spread <= CONSTANT_SPREAD * label_spread
        message = (f"the model predicts a near-constant score on the dev set (spread {spread:.3g} against the "
                   f"labels' {label_spread:.3g}): it learned nothing of the task" if collapsed else "")
        return CollapseReport(collapsed, message=message, details={"prediction_std": spread, "label_std": label_spread})
    predicted = np.asarray(predictions).argmax(axis=-1)
    counts = np.bincount(predicted, minlength=predictions.shape[-1])
    share = float(counts.max() / len(predicted))
    majority = int(np.bincount(labels).argmax())
    constant = np.zeros_like(np.asarray(predictions, dtype=float))
    constant[:, majority] = 1.0
    baseline = {name: float(value) for name, value in metric_fn(constant, labels).items()}
    at_majority_level = all(metrics[name] <= baseline[name] + MARGIN for name in baseline)
    single_class = share >= SINGLE_CLASS_SHARE
    collapsed = single_class or at_majority_level
    if single_class:
        message = (f"the model gives {share:.1%} of the dev examples the same label (class {int(counts.argmax())}): "
                   "it collapsed onto the class prior")
    elif at_majority_level:
        message = ("no dev metric beats predicting the majority class ("
                   + ", ".join(f"{n} {metrics[n]:.4f} vs {v:.4f}" for n, v in baseline.items()) + ")")
    else:
        message = ""
    return CollapseReport(collapsed, share, baseline, message)


def check_embedding_collapse(student: np.ndarray, teacher: np.ndarray) -> CollapseReport:
    """Has a distilled student collapsed onto (nearly) one embedding for every text?

    The student's embeddings of the validation texts must spread around their mean by more than
    :data:`CONSTANT_SPREAD` of what the teacher's do (root mean squared distance to the mean); a
    student that maps every text to about the same vector can still show a fair mean cosine to a
    teacher whose embeddings share a large common direction.
    """
    def spread(embeddings: np.ndarray) -> float:
        return float(np.sqrt(((embeddings - embeddings.mean(0)) ** 2).sum(-1).mean()))

    student_spread, teacher_spread = spread(np.asarray(student, float)), spread(np.asarray(teacher, float))
    collapsed = student_spread <= CONSTANT_SPREAD * teacher_spread
    message = (f"the student gives every validation text nearly the same embedding (spread {student_spread:.3g} "
               f"against the teacher's {teacher_spread:.3g})" if collapsed else "")
    return CollapseReport(collapsed, message=message,
                          details={"student_spread": student_spread, "teacher_spread": teacher_spread})
