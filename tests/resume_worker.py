"""Child process of the kill-and-resume tests: trains the tiny model, optionally killing itself.

    python resume_worker.py OUTPUT_DIR MODE     MODE: full | kill-between | kill-during | resume
"""

import os
import signal
import sys

import torch
from transformers import TrainerCallback, TrainingArguments

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import RandomTask, wrapped_model  # noqa: E402

from peft_rankdyna import RankDynaTrainer  # noqa: E402


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillAtStepEnd(TrainerCallback):
    """SIGKILL between checkpoints: after step 14, two steps past the complete checkpoint-12."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 14:
            _die()


def kill_while_writing_checkpoint_12() -> None:
    """SIGKILL in the middle of writing checkpoint-12: adapter written, optimizer state not."""
    real_save = torch.save

    def save(obj, path, *args, **kwargs):
        if "checkpoint-12" in str(path) and str(path).endswith("optimizer.pt"):
            _die()
        return real_save(obj, path, *args, **kwargs)

    torch.save = save


def main(output_dir: str, mode: str) -> None:
    callbacks = [KillAtStepEnd()] if mode == "kill-between" else []
    if mode == "kill-during":
        kill_while_writing_checkpoint_12()
    arguments = TrainingArguments(
        output_dir=output_dir, max_steps=20, per_device_train_batch_size=8, learning_rate=1e-3, save_steps=6,
        save_strategy="steps", report_to=[], disable_tqdm=True, use_cpu=True, seed=0, data_seed=0, logging_steps=50,
    )
    model = wrapped_model()
    trainer = RankDynaTrainer(model=model, args=arguments, train_dataset=RandomTask(), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=True if mode == "resume" else None)
    masks = {name: layer.mask for name, layer in model.base_model.rankdyna_layers().items()}
    torch.save(masks, os.path.join(output_dir, "final-masks.pt"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
