"""Your own data: a training and a validation file (CSV, TSV or JSON lines) instead of a GLUE task.

Columns follow transformers' ``run_glue.py`` example: the label is ``label`` unless named; the text
is ``sentence1``/``sentence2`` when both exist, else ``sentence`` or ``text``, else the one (or two)
other columns, else it must be named. Labels that are all numbers, one of them written as a float
(``3.5``, ``4.0``), make a regression task; any other labels are classes, mapped to ids in sorted order (the mapping is
saved in the model's config as ``id2label``/``label2id``). Every problem with a file is a
``ValueError`` naming the file and the line or column, raised before any model is loaded.

One rule per format, so that rows are never merged or padded silently:

- TSV: a field is everything between two tabs; quotes are ordinary characters (GLUE's own files
  are read the same way). A row with more or fewer fields than the header is an error.
- CSV: standard quoting (a field with a comma is written in double quotes, ``""`` is a quote),
  but a field may not span lines: a row that does (an unclosed quote, usually) is an error naming
  the line it starts on, as is a row with more or fewer fields than the header.
- JSON lines: one object per line; an object without one of the columns used is an error.
- Regression labels must be finite numbers (``nan`` and ``inf`` are errors).
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence

from .labelled import LabelledSplit, LabelledTask

PAIR_NAMES = ("sentence1", "sentence2")
SINGLE_NAMES = ("sentence", "text")


@dataclass(frozen=True)
class FileTask(LabelledTask):
    """A task made from your own files: what it predicts, and the columns its text and labels came from."""

    text_columns: tuple[str, ...] = ()
    label_column: str = "label"


@dataclass
class _Table:
    """A file's rows as text, each with the line it starts on."""

    path: str
    columns: list[str]
    rows: list[dict[str, str]]
    lines: list[int]


def read_table(path: str) -> _Table:
    """Read a CSV, TSV or JSON-lines file into rows of strings; empty or unreadable files are errors."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Data file not found: {path}")
    extension = os.path.splitext(path)[1].lower()
    if extension in (".json", ".jsonl"):
        return _read_json_lines(path)
    if extension not in (".csv", ".tsv"):
        raise ValueError(f"{path}: unknown file type {extension!r}; use .csv, .tsv or .jsonl (JSON lines).")
    quoting = {"quoting": csv.QUOTE_NONE} if extension == ".tsv" else {}
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t" if extension == ".tsv" else ",", **quoting)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path}: the file is empty (no header, no rows).")
        rows, lines, previous_line = [], [], reader.line_num
        for fields in reader:
            line = previous_line + 1
            if reader.line_num != line:
                raise ValueError(f"{path}:{line}: a quoted field runs over {reader.line_num - line + 1} lines "
                                 "(an unclosed double quote?); fields may not span lines.")
            previous_line = reader.line_num
            if not fields:
                continue  # a blank line
            if len(fields) != len(header):
                which = "more" if len(fields) > len(header) else "fewer"
                raise ValueError(f"{path}:{line}: {len(fields)} fields, {which} than the header's {len(header)} "
                                 "columns.")
            rows.append(dict(zip(header, fields)))
            lines.append(line)
    if not rows:
        raise ValueError(f"{path}: no data rows below the header.")
    return _Table(path, header, rows, lines)


def _read_json_lines(path: str) -> _Table:
    rows, lines, columns = [], [], []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg}).") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected one JSON object per line.")
            columns += [key for key in record if key not in columns]
            rows.append({key: "" if value is None else str(value) for key, value in record.items()})
            lines.append(number)
    if not rows:
        raise ValueError(f"{path}: the file is empty (no JSON lines).")
    return _Table(path, columns, rows, lines)


def infer_columns(table: _Table, text_columns: Optional[Sequence[str]], label_column: Optional[str]
                  ) -> tuple[list[str], str]:
    """The text columns (one or two) and the label column, as named or inferred like ``run_glue.py``."""
    label = label_column or "label"
    if label not in table.columns:
        raise ValueError(f"{table.path}: no label column {label!r} (columns: {', '.join(table.columns)}); "
                         "name it with --label-column.")
    if text_columns:
        if not 1 <= len(text_columns) <= 2:
            raise ValueError(f"Give one or two text columns, got {len(text_columns)}: {list(text_columns)}.")
        texts = list(text_columns)
    elif all(name in table.columns for name in PAIR_NAMES):
        texts = list(PAIR_NAMES)
    elif any(name in table.columns for name in SINGLE_NAMES):
        texts = [next(name for name in SINGLE_NAMES if name in table.columns)]
    else:
        others = [c for c in table.columns if c != label]
        if not 1 <= len(others) <= 2:
            raise ValueError(f"{table.path}: cannot tell the text columns among {', '.join(others)}; "
                             "name one or two with --text-columns.")
        texts = others
    for name in [*texts, label]:
        if name not in table.columns:
            raise ValueError(f"{table.path}: no column {name!r} (columns: {', '.join(table.columns)}).")
        _require_in_every_row(table, name)
    for name in texts:
        if not any(row.get(name, "").strip() for row in table.rows):
            raise ValueError(f"{table.path}: text column {name!r} is empty in every row.")
    return texts, label


def _require_in_every_row(table: _Table, column: str) -> None:
    """A JSON-lines object without ``column`` is an error naming its line (CSV/TSV rows all have every column)."""
    for row, line in zip(table.rows, table.lines):
        if column not in row:
            raise ValueError(f"{table.path}:{line}: no {column!r} key in this line's object.")


def _is_float_text(text: str) -> bool:
    """A number written as a float (``3.5``, ``3.0``, ``1e-2``): what makes a label a regression target."""
    return _is_number(text) and any(mark in text for mark in ".eE")


def _is_number(text: str) -> bool:
    """A finite number: ``nan`` and ``inf`` are no label to learn."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _label_kind(table: _Table, label: str) -> Optional[tuple[str, ...]]:
    """The sorted class names, or None for regression (every label a number, one written as a float)."""
    values = [row[label].strip() for row in table.rows]
    for value, line in zip(values, table.lines):
        if value == "":
            raise ValueError(f"{table.path}:{line}: empty label in column {label!r}.")
    fractional = next(((v, line) for v, line in zip(values, table.lines) if _is_float_text(v)), None)
    if fractional is None:
        return tuple(sorted(set(values), key=lambda v: (not _is_number(v), float(v) if _is_number(v) else 0.0, v)))
    for value, line in zip(values, table.lines):
        if not _is_number(value):
            raise ValueError(f"{table.path}:{line}: label {value!r} is not a number, but {fractional[0]!r} "
                             f"(line {fractional[1]}) makes this a regression file: every label must be a number.")
    return None


def _split(table: _Table, texts: list[str], label: str, classes: Optional[tuple[str, ...]], train_path: str
           ) -> LabelledSplit:
    labels = []
    for row, line in zip(table.rows, table.lines):
        value = row[label].strip()
        if classes is None:
            if not _is_number(value):
                raise ValueError(f"{table.path}:{line}: label {value!r} is not a number; the training file "
                                 f"{train_path} makes this a regression task.")
            labels.append(float(value))
        elif value not in classes:
            raise ValueError(f"{table.path}:{line}: label {value!r} does not occur in the training file {train_path} "
                             f"(its labels: {', '.join(classes)}).")
        else:
            labels.append(classes.index(value))
    return LabelledSplit(texts=[[row[name] for row in table.rows] for name in texts], labels=labels)


def load_files(train_file: str, validation_file: str, text_columns: Optional[Sequence[str]] = None,
               label_column: Optional[str] = None) -> tuple[LabelledSplit, LabelledSplit, FileTask]:
    """Both splits of your own data and the task they make (labels, metrics), checked before any training.

    Classification is scored by accuracy and F1 (two classes) or macro-F1 (more), regression by Pearson
    and Spearman correlation.
    """
    train_table, dev_table = read_table(train_file), read_table(validation_file)
    texts, label = infer_columns(train_table, text_columns, label_column)
    infer_columns(dev_table, texts, label)  # the same columns must be there, and not empty
    classes = _label_kind(train_table, label)
    if classes is not None and len(classes) < 2:
        raise ValueError(f"{train_file}: column {label!r} holds one label only ({classes[0]!r}); nothing to learn.")
    if classes is None:
        metrics: tuple[str, ...] = ("pearson", "spearmanr")
    else:
        metrics = ("accuracy", "f1") if len(classes) == 2 else ("accuracy", "macro_f1")
    task = FileTask(name=os.path.splitext(os.path.basename(train_file))[0], labels=classes, metric_names=metrics,
                    text_columns=tuple(texts), label_column=label)
    return (_split(train_table, texts, label, classes, train_file), _split(dev_table, texts, label, classes, train_file),
            task)


def read_texts(path: str, columns: Optional[Sequence[str]] = None) -> list[str]:
    """Texts from a plain text file (one per line) or from columns of a CSV/TSV/JSON-lines file.

    Every column named in ``columns`` gives its texts, column after column; without ``columns``, every
    text column inferred as for labelled data (``sentence1``/``sentence2``, ``sentence``, ``text``).
    Empty texts are dropped; none left is an error.
    """
    if path.endswith(".txt"):
        if columns:
            raise ValueError(f"{path}: a .txt file holds one text per line and has no columns; drop --text-columns.")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Text file not found: {path}")
        with open(path, encoding="utf-8") as handle:
            texts = [line.strip() for line in handle]
    else:
        table = read_table(path)
        columns = list(columns) if columns else [c for c in (*PAIR_NAMES, *SINGLE_NAMES) if c in table.columns]
        missing = [c for c in columns if c not in table.columns]
        if missing or not columns:
            raise ValueError(f"{path}: no text column {missing[0] if missing else ''!r} (columns: "
                             f"{', '.join(table.columns)}); name it with --text-columns.")
        for column in columns:
            _require_in_every_row(table, column)
        texts = [row[c].strip() for c in columns for row in table.rows]
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError(f"{path}: no non-empty text to learn from.")
    return texts
