"""Worker of the 2-process checkpoint test (``torchrun --nproc_per_node 2``): a CrashSafeTrainer saving under DDP.

    python -m torch.distributed.run --nproc_per_node 2 ddp_checkpoint_worker.py OUTPUT_DIR
"""

import sys

import torch
from torch import nn
from transformers import TrainingArguments

from peft_rankdyna.trainer import CrashSafeTrainer


class Regression(nn.Module):
    """A model with dropout: every process's RNG state matters to a resumed run."""

    def __init__(self):
        super().__init__()
        self.linear, self.dropout = nn.Linear(4, 1), nn.Dropout(0.5)

    def forward(self, x, y):
        return {"loss": ((self.linear(self.dropout(x)).squeeze(-1) - y) ** 2).mean()}


class Points(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        generator = torch.Generator().manual_seed(i)
        return {"x": torch.randn(4, generator=generator), "y": torch.tensor(float(i % 3))}


if __name__ == "__main__":
    torch.set_num_threads(1)
    arguments = TrainingArguments(output_dir=sys.argv[1], max_steps=6, per_device_train_batch_size=4, save_steps=2,
                                  save_strategy="steps", save_total_limit=5, report_to=[], use_cpu=True,
                                  disable_tqdm=True, logging_steps=50)
    CrashSafeTrainer(model=Regression(), args=arguments, train_dataset=Points()).train()
