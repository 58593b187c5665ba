"""DDP on 2 CPU processes (gloo): every process reaches the same masks, equal to one process's."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ddp_worker import run, train

from peft_rankdyna.distributed import check_same_masks_on_all_ranks, first_difference


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_two_process_ddp_masks_match_each_other_and_one_process(tmp_path):
    mp.spawn(run, args=(2, str(tmp_path), _free_port()), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"masks-{r}.pt") for r in (0, 1))
    single = train(rank=0, world_size=1)
    assert any(not m.all() for m in single.values())  # it did prune
    for name in single:
        assert torch.equal(rank0[name], rank1[name]), name
        assert torch.equal(rank0[name], single[name]), name


# Masks {1, 4} and {2, 3} of a 5-group matrix: a position-weighted sum (1 + 4 == 2 + 3) cannot tell them apart.
COLLIDING = ([False, True, False, False, True], [False, False, True, True, False])


def _diverging(rank: int, out_dir: str, port: int) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    masks = {"first": torch.ones(3, dtype=torch.bool), "layer": torch.tensor(COLLIDING[rank])}
    try:
        check_same_masks_on_all_ranks(masks, step=7)
    except RuntimeError as error:
        open(os.path.join(out_dir, f"error-{rank}.txt"), "w").write(str(error))
    finally:
        dist.destroy_process_group()


def test_diverging_allocations_fail_loudly(tmp_path):
    mp.spawn(_diverging, args=(str(tmp_path), _free_port()), nprocs=2, join=True)
    for rank in (0, 1):
        message = (tmp_path / f"error-{rank}.txt").read_text()
        assert "diverged between processes at step 7" in message and "layer" in message


def test_first_difference_tells_colliding_masks_apart_and_names_the_matrix():
    same = torch.tensor([1, 1, 1, *COLLIDING[0]], dtype=torch.uint8)
    other = torch.tensor([1, 1, 1, *COLLIDING[1]], dtype=torch.uint8)
    assert first_difference([same, same.clone()], [3, 5], ["first", "layer"]) is None
    assert first_difference([same, same.clone(), other], [3, 5], ["first", "layer"]) == (2, "layer")


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_crash_safe_checkpoints_under_ddp_hold_every_process_rng_state(tmp_path):
    import os
    import subprocess
    import sys

    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_checkpoint_worker.py")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                    str(_free_port()), worker, str(tmp_path)], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]  # no staging left
    for checkpoint in ("checkpoint-2", "checkpoint-4", "checkpoint-6"):
        files = set(os.listdir(tmp_path / checkpoint))
        assert {"rng_state_0.pth", "rng_state_1.pth", "model.safetensors", "optimizer.pt"} <= files, checkpoint
