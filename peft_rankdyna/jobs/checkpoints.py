"""A job's checkpoints: which jobs may write them, and when a resumed run may continue one.

A job with ``save_steps`` writes crash-safe checkpoints (:class:`peft_rankdyna.trainer.CrashSafeTrainer`)
into its output folder and records its settings there (``job_settings.json``, RankDynaConfig's
resolved fields included, so a changed default counts). ``resume`` continues from the last complete
checkpoint only when the settings are those of the run that wrote it: a run resumed with another
learning rate or budget would be neither run, and its results would say nothing. What the paths
point at (the texts, the model) is not compared. Checkpoints cover one training round; a two-round
baseline that would train twice writes none, nor does self-distillation, whose frozen copy of the
model is not checkpointed. Once the job has written its results the checkpoints are removed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import TYPE_CHECKING, Any, Optional

from transformers.trainer_utils import get_last_checkpoint

from ..io import atomic_write_text

if TYPE_CHECKING:
    from ..config import RankDynaConfig
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


def prepare_checkpoints(settings: CompressSettings, objective: Objective, config: Optional[RankDynaConfig]) -> None:
    """Check ``save_steps``/``resume`` against the job (``config``: its RankDynaConfig, if any) and its output
    folder before any slow work, and record a checkpointed run's settings; raises ValueError naming what to do
    instead. A new run never starts in a folder holding checkpoints, with or without ``save_steps``."""
    existing, record = last_checkpoint(settings.output_dir), os.path.join(settings.output_dir, SETTINGS_FILE)
    if existing is not None and not settings.resume:
        raise ValueError(f"{settings.output_dir} holds checkpoints of an earlier run (last: "
                         f"{os.path.basename(existing)}): pass --resume to continue it, or choose another --output.")
    if not (settings.save_steps or settings.resume):
        return
    if objective.first_round and settings.budget is not None and settings.method != "rankdyna" \
            and settings.finetuned_model is None:
        raise ValueError("Checkpoints cover one training round, and this baseline trains two: run the first round "
                         "as a dense job (--dense, with --save-steps), then the baseline with --finetuned-model "
                         "set to its finetuned/ folder.")
    if settings.self_distill_weight:
        raise ValueError("Self-distillation takes a frozen copy of the model at the end of the warm-up, and the "
                         "copy is not checkpointed: a resumed run would distil from another copy than the run never "
                         "killed. Train it without --save-steps/--resume.")
    now = _comparable(settings, config)
    if not settings.resume:
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


def remove_checkpoints(output_dir: str) -> None:
    """Remove the job's checkpoints once its results are written: the adapter and the compact model are what it
    made (a crash before this leaves them, and a resume then only re-saves and re-scores)."""
    while (checkpoint := last_checkpoint(output_dir)) is not None:
        shutil.rmtree(checkpoint)


def _comparable(settings: CompressSettings, config: Optional[RankDynaConfig]) -> dict[str, Any]:
    """The settings that decide what a run trains, as JSON holds them (tuples as lists): the job's, and its
    RankDynaConfig's resolved fields (a default the settings do not name, as the run used it)."""
    values = {key: value for key, value in dataclasses.asdict(settings).items() if key not in NOT_COMPARED}
    if config is not None:
        values["rankdyna_config"] = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return json.loads(json.dumps(values, default=str))
