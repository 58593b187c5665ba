"""`RankDynaTrainer`: transformers' Trainer with RankDyna's callback in front and crash-safe checkpoints."""

from __future__ import annotations

import functools
import glob
import inspect
import os
import shutil
import tempfile
from typing import Any, Optional

import transformers
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .callback import RankDynaCallback
from .io import replace_dir

_STAGING_PREFIX = ".staging-"
# What the staging redirect relies on in transformers' (private) checkpoint code; transformers has no
# public hook for where a checkpoint is written. Checked when a RankDynaTrainer is built, so an
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
            f"RankDynaTrainer's crash-safe checkpoints rely on transformers' Trainer._save_checkpoint calling "
            f"{' and '.join(_SAVE_CHECKPOINT_CALLS)}; transformers {transformers.__version__} does not ({reason}). "
            "Install transformers 4.57.x, or use transformers.Trainer with RankDynaCallback.attach(trainer) "
            "(checkpoints then are not written atomically)."
        )


class RankDynaTrainer(Trainer):
    """A ``Trainer`` for RankDyna models.

    - Registers a :class:`RankDynaCallback` as the first callback, so its statistics reach the
      progress bar, TensorBoard and every other logger.
    - Writes every checkpoint into a hidden staging folder and renames it to ``checkpoint-N``
      only once complete: a run killed at any point leaves only complete checkpoints, and
      ``train(resume_from_checkpoint=True)`` resumes from the last of them.

    Args:
        rankdyna_callback: The callback to use (default: a new ``RankDynaCallback()``).
        *args, **kwargs: As for ``transformers.Trainer``.
    """

    def __init__(self, *args: Any, rankdyna_callback: Optional[RankDynaCallback] = None, **kwargs: Any) -> None:
        check_trainer_internals(Trainer)
        super().__init__(*args, **kwargs)
        self.rankdyna_callback = RankDynaCallback.attach(self, rankdyna_callback)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        os.makedirs(run_dir, exist_ok=True)
        for stale in glob.glob(os.path.join(run_dir, f"{_STAGING_PREFIX}*")):  # left by an earlier crash
            shutil.rmtree(stale, ignore_errors=True)
        staging = tempfile.mkdtemp(dir=run_dir, prefix=_STAGING_PREFIX)
        # Trainer writes to <output dir>/checkpoint-N: point it at the staging folder for this save.
        self._get_output_dir = lambda trial=None: staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            del self._get_output_dir
        if self.args.should_save:
            replace_dir(os.path.join(staging, name), os.path.join(run_dir, name))
            best = self.state.best_model_checkpoint
            if best is not None and best.startswith(staging):
                self.state.best_model_checkpoint = run_dir + best[len(staging):]
            self._rotate_checkpoints(use_mtime=True, output_dir=run_dir)
        shutil.rmtree(staging, ignore_errors=True)
