"""GLUE tasks: official TSV layout (``GLUE_DIR``) or the ``datasets`` hub."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import Optional

from .labelled import LabelledSplit, LabelledTask


@dataclass(frozen=True)
class GlueTask(LabelledTask):
    """A GLUE task: what it predicts, and where its fields sit in the official TSV files.

    Columns are header names, or integer positions for the files without a header (CoLA) or
    with unusable ones (MRPC's header names are not unique after stripping).
    """

    folder: str = ""
    text_columns: tuple = ()
    label_column: object = "label"
    has_header: bool = True
    dev_file: str = "dev.tsv"
    hub_text_fields: tuple[str, ...] = ("sentence",)


TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in (
        GlueTask("cola", ("0", "1"), ("matthews_correlation",), "CoLA", (3,), 1, has_header=False),
        GlueTask("sst2", ("0", "1"), ("accuracy",), "SST-2", ("sentence",), "label"),
        GlueTask("mrpc", ("0", "1"), ("accuracy", "f1"), "MRPC", (3, 4), 0, hub_text_fields=("sentence1", "sentence2")),
        GlueTask("stsb", None, ("pearson", "spearmanr"), "STS-B", ("sentence1", "sentence2"), "score",
                 hub_text_fields=("sentence1", "sentence2")),
        GlueTask("rte", ("entailment", "not_entailment"), ("accuracy",), "RTE", ("sentence1", "sentence2"), "label",
                 hub_text_fields=("sentence1", "sentence2")),
        GlueTask("qnli", ("entailment", "not_entailment"), ("accuracy",), "QNLI", ("question", "sentence"), "label",
                 hub_text_fields=("question", "sentence")),
        GlueTask("mnli", ("contradiction", "entailment", "neutral"), ("accuracy",), "MNLI", ("sentence1", "sentence2"),
                 "gold_label", dev_file="dev_matched.tsv", hub_text_fields=("premise", "hypothesis")),
        GlueTask("qqp", ("0", "1"), ("accuracy", "f1"), "QQP", ("question1", "question2"), "is_duplicate",
                 hub_text_fields=("question1", "question2")),
    )
}

_ALIASES = {"sst-2": "sst2", "sts-b": "stsb"}


def get_task(name: str) -> GlueTask:
    """Task metadata by name (case-insensitive; ``SST-2`` and ``sst2`` both work)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in TASKS:
        raise ValueError(f"Unknown GLUE task {name!r}; choose one of {', '.join(sorted(TASKS))}.")
    return TASKS[key]


def load_glue(task: GlueTask, split: str, glue_dir: Optional[str] = None) -> LabelledSplit:
    """Load ``split`` ("train" or "dev") from ``glue_dir`` (default ``$GLUE_DIR``), else from the hub."""
    glue_dir = glue_dir or os.environ.get("GLUE_DIR")
    if glue_dir:
        filename = "train.tsv" if split == "train" else task.dev_file
        return read_tsv(task, os.path.join(glue_dir, task.folder, filename))
    return _load_from_hub(task, split)


def read_tsv(task: GlueTask, path: str) -> LabelledSplit:
    """Parse one GLUE TSV file; every malformed row is reported with its file and line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GLUE file not found: {path} (is GLUE_DIR pointing at the GLUE root folder?)")
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not valid UTF-8 ({error}).") from None
    header = rows.pop(0) if task.has_header and rows else None
    columns = [*task.text_columns, task.label_column]
    positions = [_column_position(column, header, path) for column in columns]
    if not rows:
        raise ValueError(f"{path}: the split is empty (no data rows).")
    texts: list[list[str]] = [[] for _ in task.text_columns]
    labels = []
    for line, row in enumerate(rows, start=2 if header else 1):
        if len(row) <= max(positions):
            raise ValueError(f"{path}:{line}: {len(row)} columns, expected at least {max(positions) + 1}.")
        for column, position in zip(texts, positions):
            column.append(row[position])
        labels.append(_parse_label(task, row[positions[-1]], f"{path}:{line}"))
    return LabelledSplit(texts=texts, labels=labels)


def _column_position(column: object, header: Optional[list[str]], path: str) -> int:
    if isinstance(column, int):
        return column
    if header is None or column not in header:
        raise ValueError(f"{path}: header {header} has no column {column!r}; is this the right task's file?")
    return header.index(column)


def _parse_label(task: GlueTask, raw: str, where: str):
    if task.is_regression:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{where}: score {raw!r} is not a number.") from None
    if raw not in task.labels:
        raise ValueError(f"{where}: label {raw!r} is not one of {task.name}'s labels {list(task.labels)}.")
    return task.labels.index(raw)


def _load_from_hub(task: GlueTask, split: str) -> LabelledSplit:
    try:
        import datasets
    except ImportError:
        raise ValueError(
            "No GLUE_DIR set and the `datasets` package is not installed: point GLUE_DIR at a GLUE folder in the "
            "official TSV layout, or `pip install peft-rankdyna[hub]` to download the task."
        ) from None
    hub_split = "validation_matched" if (task.name == "mnli" and split == "dev") else (
        "train" if split == "train" else "validation"
    )
    data = datasets.load_dataset("nyu-mll/glue", task.name, split=hub_split)
    return LabelledSplit(texts=[list(data[f]) for f in task.hub_text_fields], labels=list(data["label"]))
