"""`RankDynaCallback`: drives the allocator from transformers' Trainer and logs what it does."""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .io import atomic_write_text
from .model import RankDynaModel, find_rankdyna_model

HISTORY_FILE = "rankdyna_history.json"
HISTORY_KEY = "rankdyna_allocation"  # the history's entries in the Trainer's log history, which checkpoints save


def log_entry(state: TrainerState, key: str, entry: dict[str, Any]) -> None:
    """Keep ``entry`` in the Trainer's log history under ``key``: every checkpoint saves it, so a resumed run
    gets it back (:func:`logged_entries`). Stored as (key, value) pairs, since the checkpoint's JSON sorts keys."""
    state.log_history.append({key: list(entry.items()), "step": state.global_step})


def logged_entries(state: TrainerState, key: str) -> list[dict[str, Any]]:
    """The entries :func:`log_entry` kept under ``key``, in their order and with their keys' order."""
    return [dict(record[key]) for record in state.log_history if key in record]


def require_rankdyna_model(model: nn.Module) -> RankDynaModel:
    """The :class:`RankDynaModel` inside ``model``; a clear error when there is none."""
    found = find_rankdyna_model(model)
    if found is None:
        raise ValueError(
            f"No RankDyna model found in {type(model).__name__}: wrap it with "
            "`peft.get_peft_model(model, RankDynaConfig(...))` before training."
        )
    return found


def check_parallelism(args: TrainingArguments) -> None:
    """Refuse, before the first step, set-ups whose gradients RankDyna cannot read (sharded ones)."""
    if args.fsdp or args.deepspeed:
        which = "FSDP" if args.fsdp else "DeepSpeed"
        raise ValueError(
            f"RankDyna does not support {which}: it shards parameters and gradients, and the global rank "
            "allocation needs every factor's full gradient. Train with DDP instead "
            "(`accelerate launch --multi_gpu ...` or `torchrun --nproc_per_node N ...`)."
        )


class RankDynaCallback(TrainerCallback):
    """Runs RankDyna's importance update and budget allocation once per optimizer step.

    Steps are optimizer steps (gradient accumulation is respected). When the config has no
    ``total_step``, the Trainer's ``max_steps`` is used. Allocator state (importance statistics,
    masks) lives in the adapter's state dict, so every Trainer checkpoint holds it and
    ``resume_from_checkpoint`` restores it.

    Budget, kept parameters, score threshold and per-layer ranks are added to every log entry.
    Callbacks run in order, so for the progress bar and TensorBoard to show them this callback
    must run before theirs: use :meth:`attach`, which puts it first.

    The allocation history (one entry per mask refresh) is written to ``rankdyna_history.json``
    in the output directory at every save and at the end of training. Its entries also go into the
    Trainer's log history, so every checkpoint holds them and a resumed run's history is whole.

    Args:
        max_nonfinite_steps: Stop training (``RuntimeError`` naming the step) once this many
            optimizer steps in a row had non-finite gradients. While such a streak lasts no
            checkpoint is written, so the last checkpoint before it stays the last good one.
    """

    def __init__(self, max_nonfinite_steps: int = 10) -> None:
        self.history: list[dict[str, Any]] = []
        self.max_nonfinite_steps = max_nonfinite_steps
        self._model: Optional[RankDynaModel] = None
        self._last_checkpoint: Optional[str] = None

    @classmethod
    def attach(cls, trainer: Any, callback: Optional["RankDynaCallback"] = None) -> "RankDynaCallback":
        """Register ``callback`` (default: a new one) as the Trainer's first callback and return it."""
        callback = callback or cls()
        trainer.callback_handler.callbacks.insert(0, callback)
        return callback

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        check_parallelism(args)
        self._model = require_rankdyna_model(kwargs["model"])
        config = self._model.rankdyna_config
        if config.total_step is None:
            config.total_step = state.max_steps
        elif config.total_step != state.max_steps:
            raise ValueError(
                f"RankDynaConfig.total_step={config.total_step} but the Trainer will run {state.max_steps} optimizer "
                "steps; leave total_step unset to take the Trainer's."
            )
        config.schedule()  # raises now, naming the conflicting numbers, if the schedule cannot run
        if state.global_step:  # resumed: the entries so far come back from the checkpoint
            self.history = logged_entries(state, HISTORY_KEY)

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ):
        allocation = self._model.update_and_allocate(state.global_step)
        streak = self._model.nonfinite_streak
        if streak >= self.max_nonfinite_steps:
            raise RuntimeError(
                f"RankDyna: non-finite gradients for {streak} optimizer steps in a row, the last at step "
                f"{state.global_step}; training stopped. Last good checkpoint: {self._last_checkpoint or 'none written'}."
            )
        if allocation is not None:
            entry = {"step": state.global_step, "budget": self._model.last_budget,
                     "kept_params": allocation.kept_params, "threshold": allocation.threshold,
                     "ranks": allocation.ranks}
            self.history.append(entry)
            log_entry(state, HISTORY_KEY, entry)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if self._model.nonfinite_streak:
            control.should_save = False  # never checkpoint weights a non-finite step may have poisoned

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs):
        if logs is not None and self._model is not None:
            logs.update(self._model.allocation_stats())

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self._last_checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        self.write_history(args.output_dir)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self.write_history(args.output_dir)

    def write_history(self, directory: str) -> str:
        """Write the allocation history as JSON into ``directory``; returns the path."""
        path = os.path.join(directory, HISTORY_FILE)
        atomic_write_text(path, json.dumps(self.history, indent=1))
        return path
