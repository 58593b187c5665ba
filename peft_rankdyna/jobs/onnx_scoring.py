"""Task metrics of an exported classifier graph on a GLUE dev set, as onnxruntime computes them.

Used to measure what a graph variant (int8, a trimmed vocabulary) costs in accuracy, beside what
``rankdyna evaluate`` measures for the PyTorch model; and the training examples static int8
quantization calibrates on.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np

from .data.glue import get_task, load_glue
from .data.labelled import compute_metrics

from ..loading import max_positions


def longest_input(folder: str, limit: int = 128) -> int:
    """``limit``, or fewer tokens where the model in ``folder`` has fewer positions."""
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
        return min(limit, max_positions(SimpleNamespace(**json.load(handle))))


def dev_batches(tokenizer: Any, task_name: str, glue_dir: Optional[str], input_names: list[str], max_length: int,
                batch_size: int = 32) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """The task's dev set tokenized as the graphs take it (padded per batch, truncated), and its labels."""
    split = load_glue(get_task(task_name), "dev", glue_dir)
    batches = []
    for start in range(0, len(split.labels), batch_size):
        columns = [column[start:start + batch_size] for column in split.texts]
        encoded = tokenizer(*columns, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        batches.append({name: encoded[name].astype(np.int64) for name in input_names})
    return batches, np.asarray(split.labels)


def calibration_examples(tokenizer: Any, task_name: str, glue_dir: Optional[str], input_names: list[str],
                         max_length: int, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` examples drawn at random from the task's *training* split, one unpadded graph feed each
    (batch 1): what static quantization fixes its activation ranges from, apart from the dev set it is scored on."""
    split = load_glue(get_task(task_name), "train", glue_dir)
    chosen = np.random.default_rng(seed).choice(len(split.labels), size=min(count, len(split.labels)), replace=False)
    feeds = []
    for index in chosen:
        encoded = tokenizer(*(column[index] for column in split.texts), truncation=True, max_length=max_length,
                            return_tensors="np")
        feeds.append({name: encoded[name].astype(np.int64) for name in input_names})
    return feeds


def dev_metrics(session: Any, batches: list[dict[str, np.ndarray]], labels: np.ndarray,
                task_name: str) -> dict[str, float]:
    """The task's dev metrics of the graph behind ``session`` (its ``logits`` output) on ``batches``."""
    logits = np.concatenate([session.run(["logits"], feeds)[0] for feeds in batches])
    return compute_metrics(get_task(task_name), logits, labels)
