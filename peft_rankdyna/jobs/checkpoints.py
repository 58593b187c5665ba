"""A job's checkpoints: which jobs may write them, and when a resumed run may continue one.

A job with ``save_steps`` writes crash-safe checkpoints (:class:`peft_rankdyna.trainer.CrashSafeTrainer`)
into its output folder and records its settings there (``job_settings.json``). ``resume`` continues
from the last complete checkpoint only when the settings are those of the run that wrote it: a run
resumed with another learning rate or budget would be neither run, and its results would say nothing.
Checkpoints cover one training round; a two-round baseline that would train twice writes none.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Optional

from transformers.trainer_utils import get_last_checkpoint

from ..io import atomic_write_text

if TYPE_CHECKING:
    from .objectives import Objective
    from .settings import CompressSettings

SETTINGS_FILE = "job_settings.json"
# Settings a resumed run may change: where it is, what it prints, and the checkpointing itself.
NOT_COMPARED = ("output_dir", "show_progress", "save_steps", "save_total_limit", "resume")


def last_checkpoint(output_dir: str) -> Optional[str]:
    """The last complete ``checkpoint-N`` folder in ``output_dir`` (staging folders are never complete), or None."""
    return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None


def resume_point(settings: CompressSettings) -> Optional[str]:
    """The checkpoint the job's training continues from: the last one with ``resume``, else None."""
    return last_checkpoint(settings.output_dir) if settings.resume else None


def checkpoint_step(checkpoint: Optional[str]) -> Optional[int]:
    """The optimizer step a ``checkpoint-N`` folder was written at (None for None)."""
    return None if checkpoint is None else int(os.path.basename(checkpoint).rsplit("-", 1)[1])


def prepare_checkpoints(settings: CompressSettings, objective: Objective) -> None:
    """Check ``save_steps``/``resume`` against the job and its output folder before any slow work, and record a
    checkpointed run's settings; raises ValueError naming what to do instead."""
    if not (settings.save_steps or settings.resume):
        return
    if objective.first_round and settings.budget is not None and settings.method != "rankdyna" \
            and settings.finetuned_model is None:
        raise ValueError("Checkpoints cover one training round, and this baseline trains two: run the first round "
                         "as a dense job (--dense, with --save-steps), then the baseline with --finetuned-model "
                         "set to its finetuned/ folder.")
    existing, record = last_checkpoint(settings.output_dir), os.path.join(settings.output_dir, SETTINGS_FILE)
    now = _comparable(asdict(settings))
    if not settings.resume:
        if existing is not None:
            raise ValueError(f"{settings.output_dir} holds checkpoints of an earlier run (last: "
                             f"{os.path.basename(existing)}): pass --resume to continue it, or choose another --output.")
        os.makedirs(settings.output_dir, exist_ok=True)
        atomic_write_text(record, json.dumps(now, indent=2))
        return
    if existing is None:
        raise ValueError(f"--resume: {settings.output_dir} holds no complete checkpoint to continue from.")
    if not os.path.isfile(record):
        raise ValueError(f"--resume: {settings.output_dir} holds checkpoints but not the settings of the run that "
                         f"wrote them ({SETTINGS_FILE}); it cannot be checked, so it is not continued.")
    with open(record, encoding="utf-8") as handle:
        then = json.load(handle)
    changed = {key: (then.get(key), value) for key, value in now.items() if then.get(key) != value}
    if changed:
        raise ValueError(f"--resume: {settings.output_dir} was checkpointed with other settings ("
                         + "; ".join(f"{key}: {old!r} then, {new!r} now" for key, (old, new) in changed.items())
                         + "); resume with the same settings, or start a new run in another --output.")


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide what a run trains, as JSON holds them (tuples as lists)."""
    return json.loads(json.dumps({key: value for key, value in settings.items() if key not in NOT_COMPARED}))
