"""A run killed between or during checkpoint writes resumes to the masks of an uninterrupted run."""

import os
import signal
import subprocess
import sys

import pytest
import torch

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resume_worker.py")


def _run(output_dir, mode):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, WORKER, str(output_dir), mode], env=env, capture_output=True, text=True,
                          timeout=300)


def _checkpoints(folder):
    names = [p.name for p in folder.iterdir() if p.name.startswith("checkpoint-")]
    return sorted(names, key=lambda name: int(name.split("-")[1]))


@pytest.fixture(scope="module")
def uninterrupted_masks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("full")
    assert _run(folder, "full").returncode == 0
    return torch.load(folder / "final-masks.pt")


@pytest.mark.parametrize("mode, last_complete", [("kill-during", "checkpoint-6"), ("kill-between", "checkpoint-12")])
def test_killed_run_resumes_to_the_same_masks(tmp_path, uninterrupted_masks, mode, last_complete):
    killed = _run(tmp_path, mode)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert _checkpoints(tmp_path)[-1] == last_complete  # nothing half-written under a checkpoint name
    for checkpoint in _checkpoints(tmp_path):
        assert {"adapter_model.safetensors", "optimizer.pt", "trainer_state.json"} <= set(os.listdir(tmp_path / checkpoint))

    resumed = _run(tmp_path, "resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    masks = torch.load(tmp_path / "final-masks.pt")
    assert all(torch.equal(masks[name], uninterrupted_masks[name]) for name in uninterrupted_masks)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".staging-")]
