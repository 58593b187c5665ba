"""The GLUE example runs as a user would run it, on classification and on STS-B regression."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, minilm_path

pytestmark = pytest.mark.real_model


def _run_example(tmp_path, glue_dir, task, *data):
    env = {**os.environ, "GLUE_DIR": glue_dir, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, os.path.join(REPO_ROOT, "examples", "run_glue.py"), "--model", minilm_path(),
               *(data or ["--task", task]), "--output", str(tmp_path / task), "--max-steps", "12",
               "--max-train-samples", "64"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout[result.stdout.rindex("{\n"):])  # the final metrics, after the training logs


def test_example_classification(tmp_path, glue_dir):
    metrics = _run_example(tmp_path, glue_dir, "cola")
    assert "eval_matthews_correlation" in metrics
    assert metrics["target_params_kept"] <= 0.5 * metrics["target_params_dense"]


def test_example_stsb_regression(tmp_path, stsb_glue_dir):
    metrics = _run_example(tmp_path, stsb_glue_dir, "stsb")
    assert {"eval_pearson", "eval_spearmanr"} <= set(metrics)


def test_example_on_your_own_files(tmp_path):
    rows = [f"{i},The {w} film was {w}.,{'positive' if w in ('good', 'fine') else 'negative'}\n"
            for i, w in enumerate(["good", "bad", "fine", "awful"] * 20)]
    for name in ("train", "dev"):
        (tmp_path / f"{name}.csv").write_text("id,review,label\n" + "".join(rows))
    metrics = _run_example(tmp_path, "", "own", "--train-file", str(tmp_path / "train.csv"), "--validation-file",
                           str(tmp_path / "dev.csv"), "--text-columns", "review")
    assert {"eval_accuracy", "eval_f1"} <= set(metrics)
