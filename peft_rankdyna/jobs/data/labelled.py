"""Labelled text tasks, whatever file they come from: what is predicted, how it is scored, the tokenised rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class LabelledTask:
    """A task's name, its classes (``None``: regression) and the metrics it is scored by."""

    name: str
    labels: Optional[tuple[str, ...]]
    metric_names: tuple[str, ...]

    @property
    def is_regression(self) -> bool:
        """A task without classes predicts a score."""
        return self.labels is None

    @property
    def num_labels(self) -> int:
        """Output width of the head."""
        return 1 if self.labels is None else len(self.labels)

    def label_maps(self) -> dict[str, Any]:
        """``id2label``/``label2id`` for the model config of a classification task (nothing for regression)."""
        if self.labels is None:
            return {}
        return {"id2label": dict(enumerate(self.labels)), "label2id": {name: i for i, name in enumerate(self.labels)}}


@dataclass
class LabelledSplit:
    """One split of a task: text columns (one or two lists) and labels (class ids or floats)."""

    texts: list[list[str]]
    labels: list


class TokenizedSplit(torch.utils.data.Dataset):
    """A tokenised split (first ``limit`` rows), items ready for ``DataCollatorWithPadding``."""

    def __init__(self, tokenizer: Any, split: LabelledSplit, max_length: int, limit: Optional[int] = None) -> None:
        count = len(split.labels) if limit is None else min(limit, len(split.labels))
        self.encodings = tokenizer(*[column[:count] for column in split.texts], truncation=True, max_length=max_length)
        self.labels = split.labels[:count]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {key: values[index] for key, values in self.encodings.items()}
        item["labels"] = self.labels[index]
        return item


def compute_metrics(task: LabelledTask, predictions: np.ndarray, labels: Sequence) -> dict[str, float]:
    """The task's metrics from logits (classification) or scores (regression)."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    labels = np.asarray(labels)
    if task.is_regression:
        scores = np.asarray(predictions).reshape(-1)
        return {"pearson": float(pearsonr(scores, labels)[0]), "spearmanr": float(spearmanr(scores, labels)[0])}
    predicted = np.asarray(predictions).argmax(axis=-1)
    available = {
        "accuracy": lambda: accuracy_score(labels, predicted),
        "f1": lambda: f1_score(labels, predicted),
        "macro_f1": lambda: f1_score(labels, predicted, average="macro"),
        "matthews_correlation": lambda: matthews_corrcoef(labels, predicted),
    }
    return {name: float(available[name]()) for name in task.metric_names}
