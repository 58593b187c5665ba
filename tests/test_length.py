"""The default training length (issue #21): one RankDyna round as long as the two rounds it replaces."""

import json
from dataclasses import asdict

import pytest

from peft_rankdyna.jobs.cli import build_parser, compress_settings, main
from peft_rankdyna.jobs.length import BASE_EPOCHS, RANKDYNA_EPOCHS, default_epochs, with_default_length
from peft_rankdyna.jobs.settings import CompressSettings


def test_a_rankdyna_round_that_replaces_two_rounds_trains_as_long_as_both():
    assert (default_epochs(True), default_epochs(False)) == (RANKDYNA_EPOCHS, BASE_EPOCHS) == (6, 3)


@pytest.mark.parametrize("overrides, first_round, epochs", [
    ({}, True, 6.0),                                # RankDyna on classification: the two rounds' length
    ({"budget": None}, True, 3.0),                  # dense fine-tuning
    ({"method": "fwsvd"}, True, 3.0),               # each round of a baseline
    ({}, False, 3.0),                               # an objective whose baselines train one round
    ({"epochs": 2.0}, True, 2.0),                   # told: kept
])
def test_the_default_length_is_filled_in_per_method_and_objective(tmp_path, overrides, first_round, epochs):
    settings = CompressSettings(**{"model": "m", "task": "mrpc", "output_dir": str(tmp_path), **overrides})
    resolved = with_default_length(settings, first_round)
    assert resolved.epochs == epochs
    assert settings.epochs == overrides.get("epochs")  # the caller's settings are not changed


def test_the_cli_leaves_the_length_to_the_job_unless_told(tmp_path):
    parser = build_parser()
    args = parser.parse_args(["compress", "--model", "m", "--task", "mrpc", "--output", str(tmp_path)])
    assert compress_settings(args).epochs is None
    args = parser.parse_args(["compress", "--model", "m", "--task", "mrpc", "--output", str(tmp_path), "--epochs", "3"])
    assert compress_settings(args).epochs == 3.0


@pytest.mark.parametrize("epochs", [0, -1, float("nan"), float("inf"), True, "3"])
def test_a_length_that_is_not_a_positive_number_is_refused(tmp_path, epochs):
    with pytest.raises(ValueError, match="epochs must be None"):
        CompressSettings(model="m", task="mrpc", output_dir=str(tmp_path), epochs=epochs)


def _compress(tmp_path, name, model, glue_dir, *extra):
    out = tmp_path / name
    assert main(["compress", "--model", model, "--task", "mrpc", "--glue-dir", glue_dir, "--output", str(out),
                 "--max-train-samples", "32", "--max-eval-samples", "16", "--max-seq-length", "16",
                 "--tinit", "2", "--tfinal", "2", "--delta-t", "2", "--no-progress", *extra]) == 0
    return json.loads((out / "results.json").read_text())


def test_a_job_trains_and_records_its_default_length(tmp_path, tiny_glue_model, glue_dir, capsys):
    # 32 examples at batch 16: 2 steps an epoch. RankDyna trains 6 epochs (12 steps), dense fine-tuning 3.
    rankdyna = _compress(tmp_path, "rankdyna", tiny_glue_model, glue_dir)
    assert (rankdyna["settings"]["epochs"], rankdyna["train_steps"]) == (6.0, 12)
    assert "6 epochs, 12 steps" in capsys.readouterr().out
    dense = _compress(tmp_path, "dense", tiny_glue_model, glue_dir, "--dense")
    assert (dense["settings"]["epochs"], dense["train_steps"]) == (3.0, 6)


def test_the_benchmarks_reproduce_a_run_at_the_length_it_trained():
    from conftest import load_benchmark

    summarize_runs, embeddings = load_benchmark("summarize_runs"), load_benchmark("embeddings")
    settings = {"model": "/m", "task": "mrpc", "budget": 0.5, "output_dir": "o", "epochs": 3.0,
                "learning_rate": 5e-5, "batch_size": 16, "max_seq_length": 128, "seed": 42}
    assert "--epochs 3" in summarize_runs.command_of(settings)  # a 3-epoch RankDyna run, no longer the default
    # An embedding run recorded with the length its job resolved (3) is what the same command asks for today.
    command = ["rankdyna", "compress", "--model", "m", "--objective", "embedding-distillation", "--texts", "t",
               "--output", "o"]
    recorded = CompressSettings(model="m", task=None, output_dir="o", objective="embedding-distillation", texts="t",
                                epochs=3.0)
    assert embeddings.changed_settings(command, {"settings": asdict(recorded)}) == {}
    assert embeddings.changed_settings([*command, "--epochs", "2"], {"settings": asdict(recorded)}) == {
        "epochs": (3.0, 2.0)}
