"""Trainers with crash-safe checkpoints: `CrashSafeTrainer`, and `RankDynaTrainer` with RankDyna's callback in front."""

from __future__ import annotations

import copy
import functools
import glob
import inspect
import math
import os
import shutil
import warnings
from typing import Any, Optional

import torch
import transformers
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .callback import RankDynaCallback, require_rankdyna_model
from .io import replace_dir
from .phases import output_distance, restarted_linear_schedule

_STAGING_PREFIX = ".staging-"
# What the staging redirect relies on in transformers' (private) checkpoint code; transformers has no
# public hook for where a checkpoint is written. Checked when a CrashSafeTrainer is built, so an
# upgrade that changes it fails loudly instead of writing checkpoints non-atomically.
_SAVE_CHECKPOINT_CALLS = ("self._get_output_dir(trial=trial)", "self._rotate_checkpoints(use_mtime=True, output_dir=run_dir)")


@functools.lru_cache(maxsize=None)
def check_trainer_internals(trainer_cls: type) -> None:
    """Raise if ``trainer_cls._save_checkpoint`` no longer writes through ``_get_output_dir`` (tested on 4.57)."""
    try:
        source = inspect.getsource(trainer_cls._save_checkpoint)
        rotate = inspect.signature(trainer_cls._rotate_checkpoints).parameters
    except (AttributeError, OSError, TypeError) as error:
        source, rotate = "", {}
        reason = str(error)
    else:
        reason = "its checkpoint code changed"
    if not all(call in source for call in _SAVE_CHECKPOINT_CALLS) or not {"use_mtime", "output_dir"} <= set(rotate):
        raise RuntimeError(
            "The crash-safe checkpoints of CrashSafeTrainer and RankDynaTrainer rely on transformers' "
            f"Trainer._save_checkpoint calling "
            f"{' and '.join(_SAVE_CHECKPOINT_CALLS)}; transformers {transformers.__version__} does not ({reason}). "
            "Install transformers 4.57.x, or use transformers.Trainer (with RankDynaCallback.attach(trainer) for a "
            "RankDyna model; checkpoints then are not written atomically)."
        )


class CrashSafeTrainer(Trainer):
    """A ``Trainer`` that writes every checkpoint into a hidden staging folder and renames it to
    ``checkpoint-N`` only once complete: a run killed at any point leaves only complete checkpoints,
    and ``train(resume_from_checkpoint=True)`` resumes from the last of them.

    Args:
        *args, **kwargs: As for ``transformers.Trainer``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        check_trainer_internals(Trainer)
        super().__init__(*args, **kwargs)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        # One staging folder for every process (under DDP each writes its own RNG state into it), named by the
        # step so that the processes agree on it without talking; the main process clears what a crash left.
        staging = os.path.join(run_dir, f"{_STAGING_PREFIX}{name}")
        if self.args.should_save:
            os.makedirs(run_dir, exist_ok=True)
            for stale in glob.glob(os.path.join(run_dir, f"{_STAGING_PREFIX}*")):
                shutil.rmtree(stale, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        # Trainer writes to <output dir>/checkpoint-N: point it at the staging folder for this save.
        self._get_output_dir = lambda trial=None: staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            del self._get_output_dir
        self.accelerator.wait_for_everyone()  # every process's files are written before the folder moves
        if self.args.should_save:
            replace_dir(os.path.join(staging, name), os.path.join(run_dir, name))
            best = self.state.best_model_checkpoint
            if best is not None and best.startswith(staging):
                self.state.best_model_checkpoint = run_dir + best[len(staging):]
            self._rotate_checkpoints(use_mtime=True, output_dir=run_dir)
            shutil.rmtree(staging, ignore_errors=True)


class RankDynaTrainer(CrashSafeTrainer):
    """A :class:`CrashSafeTrainer` for RankDyna models.

    - Registers a :class:`RankDynaCallback` as the first callback, so its statistics reach the
      progress bar, TensorBoard and every other logger.
    - Checkpoints are crash-safe (:class:`CrashSafeTrainer`), and carry RankDyna's masks and scores.
    - Optionally (:mod:`peft_rankdyna.phases`) restarts the learning-rate schedule when the final
      phase begins, and distils the model from its own frozen state at the end of the warm-up.

    Args:
        rankdyna_callback: The callback to use (default: a new ``RankDynaCallback()``).
        final_lr_restart: Warm the learning rate up and decay it to zero again over the final phase
            (the first decay then ends where the final phase begins); a linear schedule only.
        self_distill_weight: Weight of the distance between the model's outputs and those of a frozen
            copy of it taken at the end of the warm-up, added to the loss from then on (0: off).
        *args, **kwargs: As for ``transformers.Trainer``.
    """

    def __init__(self, *args: Any, rankdyna_callback: Optional[RankDynaCallback] = None,
                 final_lr_restart: bool = False, self_distill_weight: float = 0.0, **kwargs: Any) -> None:
        if not (math.isfinite(self_distill_weight) and self_distill_weight >= 0):
            raise ValueError(f"`self_distill_weight` must be a finite number ≥ 0, got {self_distill_weight!r}.")
        super().__init__(*args, **kwargs)
        if final_lr_restart and (self.args.lr_scheduler_type != "linear" or self.lr_scheduler is not None):
            raise ValueError("`final_lr_restart` restarts the Trainer's own linear schedule, not "
                             f"{'a scheduler passed in' if self.lr_scheduler is not None else self.args.lr_scheduler_type}.")
        self.rankdyna_callback = RankDynaCallback.attach(self, rankdyna_callback)
        self.final_lr_restart, self.self_distill_weight = final_lr_restart, self_distill_weight
        self._self_teacher: Optional[torch.nn.Module] = None

    def _schedule(self, total: int) -> Any:
        """The RankDyna model's budget schedule over ``total`` steps (``peft_rankdyna.budget.Schedule``)."""
        return require_rankdyna_model(self.model).rankdyna_config.schedule(total)

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        if not self.final_lr_restart:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            restart = self._schedule(num_training_steps).final_start
            warmups = (self.args.get_warmup_steps(restart), self.args.get_warmup_steps(num_training_steps - restart))
            factor = restarted_linear_schedule(num_training_steps, restart, warmups)
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, factor)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, **kwargs: Any) -> Any:
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, **kwargs)
        teacher = self._teacher_now() if self.self_distill_weight and model.training else None
        if teacher is not None:
            with torch.no_grad():  # the copy's outputs only: no loss of its own, no distillation target
                target = teacher(**{k: v for k, v in inputs.items() if k not in ("labels", "teacher")})
            distance = output_distance(outputs, target, inputs.get("attention_mask"))
            if self.model_accepts_loss_kwargs and kwargs.get("num_items_in_batch") is not None:
                # The model's loss is already divided across accumulated micro-batches; this mean is not.
                distance = distance / self.current_gradient_accumulation_steps
            loss = loss + self.self_distill_weight * distance
        return (loss, outputs) if return_outputs else loss

    def _teacher_now(self) -> Optional[torch.nn.Module]:
        """The frozen copy of the model taken when the warm-up ended (taken now if it just did)."""
        if self._self_teacher is not None:
            return self._self_teacher
        tinit = self._schedule(self.state.max_steps).tinit
        if self.state.global_step >= tinit:
            if self.state.global_step == 0 or self.state.global_step > tinit:
                warnings.warn(f"RankDynaTrainer: the self-distillation copy is taken at step {self.state.global_step}"
                              + (" (no warm-up: before any training)" if self.state.global_step == 0 else
                                 f", not at the warm-up's end (step {tinit}): a resumed run"), stacklevel=2)
            # A copy of the unwrapped model (``model`` may be a DDP wrapper); not checkpointed.
            self._self_teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
        return self._self_teacher
