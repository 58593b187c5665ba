"""What a job writes, one step a function: the fine-tuned model, the compact model and its report, the pictures.

Every folder is written atomically (a temporary name, then a rename), so a crash never leaves a
half-written model where a finished one is expected. Pictures need matplotlib; without it they are
skipped with one line saying so, and everything else is written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, Optional

from torch import nn

from ..accounting import matrix_table, model_report
from ..callback import RankDynaCallback
from ..compact import WEIGHTS_NAME
from ..io import atomic_write_dir, atomic_write_text
from .plots import plot_curve, plot_history, plot_rank_heatmap

FINETUNED_DIR = "finetuned"  # where a dense run keeps its fine-tuned model
COMPACT_DIR = "compact"
ADAPTER_DIR = "adapter"


def save_finetuned(model: nn.Module, tokenizer: Any, output_dir: str) -> str:
    """Save the dense fine-tuned model with its tokenizer: round 1 that the two-round baselines can reuse."""
    folder = os.path.join(output_dir, FINETUNED_DIR)

    def write(staging: str) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    atomic_write_dir(folder, write)
    return folder


def save_compact(compact: nn.Module, tokenizer: Any, output_dir: str,
                 extra_files: Optional[Callable[[str], None]] = None) -> str:
    """Save the compact model with its tokenizer (and ``extra_files`` written into its folder); returns the folder."""
    folder = os.path.join(output_dir, COMPACT_DIR)
    compact.save_pretrained(folder, tokenizer=tokenizer, extra_files=extra_files)
    return folder


def write_report(compact: nn.Module, compact_dir: str, output_dir: str, seq_len: int) -> dict[str, Any]:
    """Write ``report.json`` of the saved compact model; return its accounting for ``results.json``."""
    report = model_report(compact, seq_len, os.path.join(compact_dir, WEIGHTS_NAME))
    atomic_write_text(os.path.join(output_dir, "report.json"), json.dumps(report, indent=1))
    return {
        "compact_dir": compact_dir,
        "target_params_before": report["target_params_dense"],
        "target_params_after": report["target_params"],
        "model_params_after": report["model_params"],
        "file_size_bytes": report["file_size_bytes"],
        "flops_ratio": report["flops_ratio"],
    }


def save_training_record(model: nn.Module, callback: RankDynaCallback, output_dir: str) -> None:
    """Save the trained RankDyna adapter (it resumes, or merges again) and the allocation history."""
    model.save_pretrained(os.path.join(output_dir, ADAPTER_DIR))
    callback.write_history(output_dir)


def draw(plot: Callable[..., str], *args: Any) -> None:
    """Draw one picture; without matplotlib, say so in one line and go on."""
    try:
        plot(*args)
    except ImportError as error:
        print(f"rankdyna: no {os.path.basename(args[-1])} written ({error})")


def draw_history(callback: RankDynaCallback, dense_params: int, output_dir: str) -> None:
    """``history.png``: the budget, kept parameters and ranks over training."""
    draw(plot_history, callback.history, dense_params, os.path.join(output_dir, "history.png"))


def draw_curve(points: list[dict[str, Any]], output_dir: str) -> None:
    """``curve.png``: the dev metrics scored while training (``eval_steps``)."""
    draw(plot_curve, points, os.path.join(output_dir, "curve.png"))


def draw_ranks(compact: nn.Module, output_dir: str) -> None:
    """``ranks.png``: the kept rank of every matrix of the compact model."""
    draw(plot_rank_heatmap, matrix_table(compact), os.path.join(output_dir, "ranks.png"))
