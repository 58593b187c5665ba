"""A job's checkpoints: a killed `rankdyna compress` run resumed from its last checkpoint ends as the run that
was never killed (model, curve, allocation), and the resume refuses what it cannot continue honestly."""

import glob
import json
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from peft_rankdyna.jobs import CompressSettings, compress
from peft_rankdyna.jobs.cli import build_parser, compress_settings
from peft_rankdyna.jobs.progress import ProgressScores


class Killed(Exception):
    """Stands for the process dying at a step (the Trainer has no chance to clean up either way)."""


class Steps(TrainerCallback):
    """The optimizer steps a run takes: a resumed run takes only those after its checkpoint."""

    def __init__(self):
        self.taken = []

    def on_step_end(self, args, state, control, **kwargs):
        self.taken.append(state.global_step)


class KillAtStep(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed


def _text(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("".join(f"the cat number {i} sat on the mat and looked at dog {i % 7} .\n" for i in range(120)))
    return str(path)


def _settings(tmp_path, lm, name, **overrides):
    options = dict(model=lm, task=None, output_dir=str(tmp_path / name), budget=0.5, objective="causal-lm",
                   texts=_text(tmp_path), max_steps=8, batch_size=4, max_seq_length=32, learning_rate=1e-3,
                   init_basis="whitened", calibration_samples=8, eval_steps=2, save_steps=3, show_progress=False,
                   rankdyna={"tinit": 2, "tfinal": 2, "deltaT": 1})
    return CompressSettings(**{**options, **overrides})


def _weights(run_dir):
    (path,) = glob.glob(os.path.join(run_dir, "compact", "*.safetensors"))
    return load_file(path)


@pytest.mark.parametrize("objective, model", [("causal-lm", "tiny_lm_folder"),
                                              ("embedding-distillation", "tiny_glue_model")])
def test_a_killed_rankdyna_job_resumed_from_its_checkpoint_ends_as_the_uninterrupted_one(tmp_path, request,
                                                                                          monkeypatch, objective, model):
    folder = request.getfixturevalue(model)
    whole = compress(_settings(tmp_path, folder, "whole", objective=objective))
    with pytest.raises(Killed):
        compress(_settings(tmp_path, folder, "killed", objective=objective), callbacks=[KillAtStep(5)])
    assert sorted(p for p in os.listdir(tmp_path / "killed") if p.startswith("checkpoint")) == ["checkpoint-3"]
    scored, score = [], ProgressScores._score
    monkeypatch.setattr(ProgressScores, "_score", lambda self, m, state: (scored.append(state.global_step),
                                                                          score(self, m, state)))
    steps = Steps()
    resumed = compress(_settings(tmp_path, folder, "killed", objective=objective, resume=True), callbacks=[steps])
    assert steps.taken == [4, 5, 6, 7, 8] and scored == [4, 6, 8]  # it continued; the earlier points came back
    assert whole["resumed_from_step"] is None and resumed["resumed_from_step"] == 3
    assert resumed["train_steps"] == whole["train_steps"] == 8
    assert [p["step"] for p in resumed["curve"]] == [0, 2, 4, 6, 8]
    for a, b in zip(resumed["curve"], whole["curve"]):
        assert list(a) == list(b) and all(a[k] == pytest.approx(b[k]) for k in a)  # keys in the same order too
    assert resumed["metrics"] == pytest.approx(whole["metrics"])
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    histories = [(tmp_path / run / "rankdyna_history.json").read_text() for run in ("whole", "killed")]
    assert histories[0] == histories[1] and json.loads(histories[0])[0]["step"] < 3
    for run in ("whole", "killed"):  # the results are written: the checkpoints have served
        assert not [p for p in os.listdir(tmp_path / run) if p.startswith("checkpoint")]


def test_a_dense_job_checkpoints_and_resumes_too(tmp_path, tiny_lm_folder):
    whole = compress(_settings(tmp_path, tiny_lm_folder, "whole", budget=None, init_basis=None, rankdyna={}))
    with pytest.raises(Killed):
        compress(_settings(tmp_path, tiny_lm_folder, "killed", budget=None, init_basis=None, rankdyna={}),
                 callbacks=[KillAtStep(7)])
    steps = Steps()
    resumed = compress(_settings(tmp_path, tiny_lm_folder, "killed", budget=None, init_basis=None, rankdyna={},
                                 resume=True), callbacks=[steps])
    assert steps.taken == [7, 8] and resumed["resumed_from_step"] == 6
    assert resumed["metrics"] == pytest.approx(whole["metrics"])


def test_resume_refuses_other_settings_a_missing_checkpoint_and_a_reused_folder(tmp_path, tiny_lm_folder):
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        compress(_settings(tmp_path, tiny_lm_folder, "empty", resume=True))
    with pytest.raises(Killed):
        compress(_settings(tmp_path, tiny_lm_folder, "run"), callbacks=[KillAtStep(4)])
    with pytest.raises(ValueError, match=r"learning_rate: 0\.001 then, 0\.002 now"):
        compress(_settings(tmp_path, tiny_lm_folder, "run", resume=True, learning_rate=2e-3))
    with pytest.raises(ValueError, match=r"rankdyna: .*'tinit': 2.* then, .*'tinit': 3.* now"):
        compress(_settings(tmp_path, tiny_lm_folder, "run", resume=True, rankdyna={"tinit": 3, "tfinal": 2,
                                                                                      "deltaT": 1}))
    for save_steps in (3, None):  # a new run never starts beside another run's checkpoints
        with pytest.raises(ValueError, match="holds checkpoints of an earlier run .*checkpoint-3.*pass --resume"):
            compress(_settings(tmp_path, tiny_lm_folder, "run", save_steps=save_steps))
    record = json.loads((tmp_path / "run" / "job_settings.json").read_text())
    record["rankdyna_config"]["tfinal"] = 1  # as if RankDynaConfig's default had changed since
    (tmp_path / "run" / "job_settings.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"rankdyna_config: .*'tfinal': 1.* then, .*'tfinal': 2.* now"):
        compress(_settings(tmp_path, tiny_lm_folder, "run", resume=True))
    (tmp_path / "run" / "job_settings.json").unlink()
    with pytest.raises(ValueError, match="not the settings of the run that wrote them"):
        compress(_settings(tmp_path, tiny_lm_folder, "run", resume=True))


def test_self_distillation_is_not_checkpointed(tmp_path, tiny_lm_folder):
    with pytest.raises(ValueError, match="the copy is not checkpointed"):
        compress(_settings(tmp_path, tiny_lm_folder, "o", self_distill_weight=1.0))


def test_a_baseline_that_trains_two_rounds_writes_no_checkpoints(tmp_path, tiny_glue_model):
    (tmp_path / "train.csv").write_text("sentence,label\n" + "".join(f"text {i},{i % 2}\n" for i in range(8)))
    settings = CompressSettings(model=tiny_glue_model, task=None, output_dir=str(tmp_path / "o"), method="fwsvd",
                                train_file=str(tmp_path / "train.csv"), validation_file=str(tmp_path / "train.csv"),
                                save_steps=10)
    with pytest.raises(ValueError, match="this baseline trains two: run the first round as a dense job"):
        compress(settings)


@pytest.mark.parametrize("field, value", [("save_steps", 0), ("save_total_limit", 0), ("save_steps", 2.5)])
def test_checkpoint_counts_are_validated(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"{field} must be None or an int ≥ 1"):
        CompressSettings(model=str(tmp_path), task="mrpc", output_dir=str(tmp_path / "o"), **{field: value})


def test_the_cli_passes_the_checkpoint_options():
    args = build_parser().parse_args(["compress", "--model", "m", "--task", "mrpc", "--output", "o",
                                      "--save-steps", "500", "--save-total-limit", "1", "--resume"])
    settings = compress_settings(args)
    assert (settings.save_steps, settings.save_total_limit, settings.resume) == (500, 1, True)
