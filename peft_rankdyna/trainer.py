"""`RankDynaTrainer`: transformers' Trainer with RankDyna's callback in front and crash-safe checkpoints."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from typing import Any, Optional

from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .callback import RankDynaCallback
from .io import replace_dir

_STAGING_PREFIX = ".staging-"


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
