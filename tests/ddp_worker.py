"""Worker for the 2-process DDP test: one shard of the global batch per process (gloo, CPU)."""

import os

import torch
import torch.distributed as dist
from conftest import RandomTask, tiny_model
from peft import get_peft_model

from peft_rankdyna import RankDynaConfig

STEPS = 12
GLOBAL_BATCH = 8


def train(rank: int, world_size: int, steps: int = STEPS) -> dict:
    """Train the tiny model; process ``rank`` of ``world_size`` sees its slice of each global batch."""
    config = RankDynaConfig(target_budget=0.3, tinit=2, tfinal=2, deltaT=2, total_step=steps, task_type="SEQ_CLS")
    model = get_peft_model(tiny_model(), config)
    model.eval()  # no dropout, so every process computes exactly its share of the single-process gradient
    # broadcast_buffers=False: each process keeps its own EMAs and masks, so equality is earned, not copied.
    wrapped = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False) if world_size > 1 else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    data = RandomTask()
    shard = GLOBAL_BATCH // world_size
    for step in range(steps):
        indices = [(step * GLOBAL_BATCH + rank * shard + i) % len(data) for i in range(shard)]
        wrapped(**data[indices]).loss.backward()
        optimizer.step()
        model.base_model.update_and_allocate(step)
        optimizer.zero_grad()
    return {name: layer.mask.clone() for name, layer in model.base_model.rankdyna_layers().items()}


def run(rank: int, world_size: int, out_dir: str, port: int) -> None:
    """Entry point of ``torch.multiprocessing.spawn``: writes this process's final masks."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.save(train(rank, world_size), os.path.join(out_dir, f"masks-{rank}.pt"))
    finally:
        dist.destroy_process_group()
