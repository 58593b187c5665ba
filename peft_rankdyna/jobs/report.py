"""`rankdyna report`: the library's accounting of a saved folder, as a table for a person."""

from __future__ import annotations

import os
from typing import Any

from ..accounting import model_report
from ..compact import WEIGHTS_NAME
from ..loading import load_folder


def report_folder(directory: str, seq_len: int = 128) -> dict[str, Any]:
    """:func:`model_report` of a saved folder: compact model, RankDyna adapter or dense transformers model."""
    candidates = [os.path.join(directory, name) for name in (WEIGHTS_NAME, "model.safetensors")]
    weights = next((path for path in candidates if os.path.isfile(path)), None)
    return model_report(load_folder(directory), seq_len, weights)


def format_report(report: dict[str, Any]) -> str:
    """The report as a plain-text table: totals, then one line per target matrix."""
    dense = report["target_params_dense"]
    lines = [
        f"target-matrix params  {report['target_params']:,} of {dense:,} ({report['target_params'] / dense:.1%})",
        f"model params          {report['model_params']:,}",
        f"FLOPs/token @ {report['seq_len']:<6}  linear {report['linear_flops_per_token']:,}, attention "
        f"{report['attention_flops_per_token']:,} ({report['flops_ratio']:.3f} of dense)",
    ]
    if "file_size_bytes" in report:
        lines.append(f"weights on disk       {report['file_size_bytes'] / 2**20:.1f} MiB")
    lines.append(f"\n{'matrix':<52}{'in×out':>12}{'rank':>6}  {'form':<10}{'params':>10}{'kept':>7}")
    for row in report["matrices"]:
        kept = row["params"] / (row["in_features"] * row["out_features"])
        shape = f"{row['in_features']}×{row['out_features']}"
        lines.append(f"{row['name']:<52}{shape:>12}{row['rank']:>6}  {row['form']:<10}{row['params']:>10,}{kept:>7.1%}")
    return "\n".join(lines)
