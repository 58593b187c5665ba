"""Under DDP every process must reach the same masks: compare them exactly at every refresh."""

from __future__ import annotations

from typing import Optional

import torch


def first_difference(packed: list[torch.Tensor], sizes: list[int], names: list[str]) -> Optional[tuple[int, str]]:
    """``(process, matrix name)`` of the first packed mask set that differs from process 0's, or None.

    ``packed[p]`` holds process ``p``'s masks one after another, ``sizes[i]`` groups for ``names[i]``.
    """
    reference = packed[0]
    for process, other in enumerate(packed[1:], start=1):
        if torch.equal(other, reference):
            continue
        position = int((other != reference).nonzero()[0])
        boundaries = torch.cumsum(torch.tensor(sizes), 0)
        return process, names[int((boundaries <= position).sum())]
    return None


def check_same_masks_on_all_ranks(masks: dict[str, torch.Tensor], step: int) -> None:
    """Under torch.distributed, fail loudly if the processes' allocations differ (they must not).

    Every process gathers every other's masks, bit for bit (a few kB for a BERT-base model), so no
    two different allocations can look alike.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world = torch.distributed.get_world_size()
    if world == 1:
        return
    names = list(masks)
    device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    packed = torch.cat([masks[name].to(device=device, dtype=torch.uint8) for name in names])
    gathered = [torch.empty_like(packed) for _ in range(world)]
    torch.distributed.all_gather(gathered, packed)
    difference = first_difference([g.cpu() for g in gathered], [len(masks[n]) for n in names], names)
    if difference is not None:
        process, name = difference
        raise RuntimeError(
            f"RankDyna: the rank allocation diverged between processes at step {step} (process {process} differs "
            f"from process 0 first at {name}). Importance must come from synchronised gradients: wrap the model in "
            "DistributedDataParallel and call update_and_allocate after optimizer.step()."
        )
