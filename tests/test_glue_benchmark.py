"""The GLUE grid benchmark: a smoke run on a tiny model, resuming, and the summary."""

import argparse
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import load_benchmark

from peft_rankdyna.jobs.runner import training_device

glue = load_benchmark("glue")


def test_grid_smoke_run_resumes_and_summarises(tmp_path, tiny_glue_model, glue_dir):
    runs = str(tmp_path / "runs.jsonl")
    args = ["run", "--model", tiny_glue_model, "--tasks", "mrpc", "--budgets", "0.5", "--seeds", "1",
            "--max-steps", "2", "--max-seq-length", "64", "--max-train-samples", "mrpc=32", "--glue-dir", glue_dir,
            "--work-dir", str(tmp_path / "work"), "--runs", runs, "--parallel", "2"]
    assert glue.main(args) == 0
    records = glue.read_lines(runs)
    assert sorted(r["cell"]["method"] for r in records) == sorted(glue.DEFAULT_METHODS)
    for record in records:
        assert {"accuracy", "f1"} <= set(record["metrics"]) and record["peak_rss_mib"] > 0
        assert record["parallel"] == 2 and record["device"] == training_device()
        assert record["pipeline_wall_s"] > 0 and record["process_cpu_s"] > 0 and record["commit"]
        assert record["cpu_model"] == glue.cpu_model() != "unknown"
        assert record["packages"]["torch"] == torch.__version__ and record["packages"]["transformers"]
        assert record["command"].startswith("rankdyna compress --model $MODEL") and record["collapsed"] in (True, False)
        assert record["cell"]["model"] == "$MODEL" and tiny_glue_model not in json.dumps(record)
        if record["cell"]["method"] != "dense":
            assert record["target_params"] <= 0.5 * record["target_params_dense"]
    dense = next(r for r in records if r["cell"]["method"] == "dense")
    for record in (r for r in records if r["cell"]["method"] in ("svd", "fwsvd")):  # round 1 is the dense run
        assert "--finetuned-model" in record["command"] and record["first_round"]["key"] == dense["key"]
        assert record["pipeline_wall_s"] == pytest.approx(record["second_round"]["pipeline_wall_s"]
                                                          + dense["pipeline_wall_s"])
        assert record["process_cpu_s"] == pytest.approx(record["second_round"]["process_cpu_s"]
                                                         + dense["process_cpu_s"])
    assert glue.main(args) == 0  # a rerun finds every cell done
    assert len(glue.read_lines(runs)) == len(records)
    out = str(tmp_path / "glue")
    assert glue.main(["summarize", "--runs", runs, "--out", out]) == 0
    text = open(out + ".md", encoding="utf-8").read()
    assert "### MRPC" in text and "**" in text and "RankDyna, old defaults" in text and "FWSVD + FT †" in text
    assert " ‡ |" in text and f"trained on {training_device()}" in text
    assert os.path.getsize(out + ".png") > 0
    assert len(json.load(open(out + ".json", encoding="utf-8"))["rows"]) == 5


def _record(seed, lr, accuracy, budget=0.5, epochs=3.0):
    cell = dict(model="m", task="mrpc", method="rankdyna", budget=budget, seed=seed, learning_rate=lr, epochs=epochs,
                max_seq_length=128, max_train_samples=None, max_steps=-1)
    return {"cell": cell, "metrics": {"accuracy": accuracy}, "target_params": 1, "model_params": 2,
            "flops_ratio": 0.5, "pipeline_wall_s": 10.0, "process_cpu_s": 9.0, "threads": "1",
            "peak_rss_mib": 100.0, "command": "c"}


def test_grid_on_a_regression_task_reports_both_correlations(tmp_path, tiny_glue_model, stsb_glue_dir):
    runs, out = str(tmp_path / "runs.jsonl"), str(tmp_path / "stsb")
    assert glue.main(["run", "--model", tiny_glue_model, "--tasks", "stsb", "--methods", "dense", "fwsvd", "rankdyna",
                      "--budgets", "0.5", "--seeds", "1", "--max-steps", "2", "--max-seq-length", "32",
                      "--glue-dir", stsb_glue_dir, "--work-dir", str(tmp_path / "work"), "--runs", runs]) == 0
    records = glue.read_lines(runs)
    assert len(records) == 3 and all(set(r["metrics"]) == {"pearson", "spearmanr"} for r in records)
    assert glue.main(["summarize", "--runs", runs, "--out", out]) == 0
    assert "### STSB" in open(out + ".md", encoding="utf-8").read()


def test_grid_runs_every_method_at_the_first_budget_before_the_next():
    args = argparse.Namespace(model="m", tasks=["mrpc"], methods=["rankdyna", "dense", "svd"], budgets=[0.25, 0.5],
                              seeds=[1], lrs=[5e-5], epochs=3.0, max_seq_length=128, max_train_samples=[], max_steps=-1)
    order = [(cell.method, cell.budget) for cell in glue.grid(args)]
    assert order == [("dense", None), ("rankdyna", 0.25), ("svd", 0.25), ("rankdyna", 0.5), ("svd", 0.5)]


def _cell(method, budget=0.5, seed=1):
    return glue.Cell("m", "mrpc", method, None if method == "dense" else budget, seed, 5e-5, 3.0, 128, None, -1)


def test_two_round_cells_wait_for_their_dense_cell_and_dense_cells_go_first():
    svd, fwsvd, rankdyna, dense = _cell("svd"), _cell("fwsvd"), _cell("rankdyna"), _cell("dense")
    other_seed_svd = _cell("svd", seed=2)  # its dense cell is not part of this grid: it runs both rounds
    todo = [svd, fwsvd, rankdyna, dense, other_seed_svd]
    assert glue._ready(todo, {}, no_reuse=False) == [dense, rankdyna, other_seed_svd]
    assert glue._ready([svd, rankdyna], {"future": (dense, None)}, no_reuse=False) == [rankdyna]
    assert glue._ready([svd, rankdyna], {}, no_reuse=False) == [svd, rankdyna]  # dense done (or failed)
    assert glue._ready(todo, {}, no_reuse=True) == [dense, svd, fwsvd, rankdyna, other_seed_svd]


def test_a_terminated_runner_stops_the_cells_it_started():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    glue.LIVE_RUNS.add(child)
    try:
        with pytest.raises(SystemExit, match="stopped by signal"), glue._stopping_live_runs():
            os.kill(os.getpid(), signal.SIGTERM)
        assert child.wait(timeout=10) == -signal.SIGTERM
    finally:
        glue.LIVE_RUNS.discard(child)
        child.kill()


def test_summary_refuses_to_average_runs_from_two_kinds_of_hardware(tmp_path):
    runs = tmp_path / "runs.jsonl"
    for record in ({**_record(1, 5e-5, 0.8), "device": "cpu"}, {**_record(2, 5e-5, 0.9), "device": "NVIDIA H200"}):
        glue.append_line(str(runs), record)
    with pytest.raises(SystemExit, match="trained on NVIDIA H200 and cpu"):
        glue.main(["summarize", "--runs", str(runs), "--out", str(tmp_path / "glue")])


def test_summary_takes_mean_and_std_over_seeds_and_keeps_every_learning_rate():
    rows = glue.summarize([_record(1, 1e-5, 0.5), _record(2, 1e-5, 0.7), _record(1, 5e-5, 0.8), _record(2, 5e-5, 0.9)])
    assert [(row["learning_rate"], row["setting"]) for row in rows] == [(1e-5, {"learning_rate": 1e-5}),
                                                                         (5e-5, {"learning_rate": 5e-5})]
    assert [row["metrics"]["accuracy"]["mean"] for row in rows] == pytest.approx([0.6, 0.85])
    assert [row["metrics"]["accuracy"]["std"] for row in rows] == pytest.approx([0.1414, 0.0707], abs=1e-3)
    assert glue.summarize([_record(1, 5e-5, 0.8)])[0]["setting"] == {}  # nothing differs: no extra column


def test_summary_gives_every_epoch_count_its_own_row_and_drops_none_for_scoring_worse(tmp_path):
    # The 6-epoch runs score better on the dev set; the summary must not keep them in place of the 3-epoch ones.
    records = [_record(1, 5e-5, 0.6), _record(2, 5e-5, 0.7), _record(1, 5e-5, 0.8, epochs=6.0),
               _record(2, 5e-5, 0.9, epochs=6.0)]
    rows = glue.summarize(records)
    assert [(row["epochs"], row["setting"], row["seeds"]) for row in rows] == [(3.0, {"epochs": 3.0}, [1, 2]),
                                                                               (6.0, {"epochs": 6.0}, [1, 2])]
    assert [row["metrics"]["accuracy"]["mean"] for row in rows] == pytest.approx([0.65, 0.85])
    table = glue.markdown_table(rows, "mrpc")
    header, _, three, six = table.splitlines()[2:]
    assert header.endswith("| peak RSS MiB | epochs | lr | seeds |")
    assert three.startswith("| 0.5 | RankDyna | 0.6500 ± 0.0707 |") and three.endswith("| 3 | 5e-05 | 1, 2 |")
    assert six.startswith("| 0.5 | RankDyna | 0.8500 ± 0.0707 |") and six.endswith("| 6 | 5e-05 | 1, 2 |")
    runs = tmp_path / "runs.jsonl"
    for record in records:
        glue.append_line(str(runs), {**record, "host": "h", "cpus": 2})
    out = str(tmp_path / "glue")
    assert glue.main(["summarize", "--runs", str(runs), "--out", out]) == 0
    text = open(out + ".md", encoding="utf-8").read()
    assert "settings that differ, each value in its own rows (a column in the tables): epochs 3.0, 6.0" in text
    assert "| 0.6500 ± 0.0707 |" in text and "| 0.8500 ± 0.0707 |" in text
    saved = json.load(open(out + ".json", encoding="utf-8"))["rows"]
    assert [(row["setting"], row["metrics"]["accuracy"]["mean"]) for row in saved] == [
        ({"epochs": 3.0}, pytest.approx(0.65)), ({"epochs": 6.0}, pytest.approx(0.85))]
    # One setting on its own is the reader's choice, by name, never the summary's by score.
    assert glue.main(["summarize", "--runs", str(runs), "--out", out, "--where", "epochs=3"]) == 0
    text = open(out + ".md", encoding="utf-8").read()
    assert "2 runs with epochs=3 (`--where`)" in text and "| 0.6500 ± 0.0707 |" in text and "0.8500" not in text
    with pytest.raises(SystemExit, match="--where names epoch, which no run"):
        glue.main(["summarize", "--runs", str(runs), "--out", out, "--where", "epoch=3"])


def test_plot_draws_one_line_per_method_and_setting(tmp_path, monkeypatch):
    import matplotlib.figure

    def record(method, budget, epochs, accuracy):
        base = _record(1, 5e-5, accuracy, budget=budget, epochs=epochs)
        return {**base, "cell": {**base["cell"], "method": method}}

    rows = glue.summarize([record(method, budget, epochs, 0.5 + epochs / 20) for epochs in (3.0, 6.0)
                           for method, budget in (("dense", None), ("rankdyna", 0.5), ("rankdyna", 0.25))])
    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda figure, path, **kw: saved.append(figure))
    glue.plot_scores(rows, str(tmp_path / "plot.png"))
    handles = dict(zip(*reversed(saved[0].axes[0].get_legend_handles_labels())))
    assert sorted(handles) == ["RankDyna (epochs 3)", "RankDyna (epochs 6)", "dense fine-tuning (epochs 3)",
                               "dense fine-tuning (epochs 6)"]
    for epochs in (3, 6):  # each setting's line joins its own two budgets
        line = handles[f"RankDyna (epochs {epochs})"].lines[0]
        assert list(line.get_xdata()) == [0.25, 0.5] and list(line.get_ydata()) == [0.5 + epochs / 20] * 2
        assert handles[f"dense fine-tuning (epochs {epochs})"].get_ydata()[0] == 0.5 + epochs / 20
    assert handles["RankDyna (epochs 3)"].lines[0].get_marker() != handles["RankDyna (epochs 6)"].lines[0].get_marker()


def test_a_zero_score_is_printed_and_an_unrecorded_cpu_time_is_a_dash():
    record = _record(1, 5e-5, 0.0)  # Matthews 0.0: one class predicted for every sentence, a real result
    del record["process_cpu_s"]
    table = glue.markdown_table(glue.summarize([record]), "mrpc")
    assert "| 0.0000 |" in table and "| 10 | — |" in table


def test_collapsed_runs_are_marked_in_the_table():
    records = [{**_record(1, 5e-5, 0.0), "collapsed": True}, {**_record(2, 5e-5, 0.2), "collapsed": False}]
    assert "RankDyna ⚠ 1 of 2 collapsed |" in glue.markdown_table(glue.summarize(records), "mrpc")
    assert "collapsed" not in glue.markdown_table(glue.summarize([_record(1, 5e-5, 0.2)]), "mrpc")


def test_plot_labels_means_over_fewer_seeds(tmp_path):
    rows = glue.summarize([_record(1, 5e-5, 0.8), _record(2, 5e-5, 0.9), _record(1, 5e-5, 0.6, budget=0.25)])
    labels = glue.plot_scores(rows, str(tmp_path / "plot.png"))
    assert labels == [("mrpc", 0.25, "1 seed")] and (tmp_path / "plot.png").stat().st_size > 0


def test_plot_gives_a_method_one_colour_in_every_panel_and_one_legend(tmp_path, monkeypatch):
    import matplotlib.figure

    def record(task, method, seed):
        base = _record(seed, 5e-5, 0.5 + seed / 10)
        return {**base, "cell": {**base["cell"], "task": task, "method": method}}

    rows = glue.summarize([record("mrpc", "svd", 1), record("mrpc", "rankdyna", 1), record("cola", "rankdyna", 1)])
    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda figure, path, **kw: saved.append(figure))
    glue.plot_scores(rows, str(tmp_path / "plot.png"))
    colours = {}
    for axis in saved[0].axes:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            colours.setdefault(label, set()).add(handle.lines[0].get_color())
    assert set(colours) == {"SVD + FT", "RankDyna"} and all(len(c) == 1 for c in colours.values())
    assert colours["SVD + FT"] != colours["RankDyna"]
    assert sorted(t.get_text() for t in saved[0].legends[0].get_texts()) == ["RankDyna", "SVD + FT"]


def test_task_sample_limits_must_name_the_task(capsys):
    with pytest.raises(SystemExit) as exit_info:
        glue.main(["run", "--model", "m", "--max-train-samples", "8000"])
    assert exit_info.value.code == 2 and "takes TASK=N (e.g. sst2=8000), got '8000'" in capsys.readouterr().err


@pytest.mark.parametrize("parallel", ["0", "-1", "two"])
def test_parallel_takes_a_whole_number_of_at_least_one(parallel, capsys):
    with pytest.raises(SystemExit) as exit_info:
        glue.main(["run", "--model", "m", "--parallel", parallel])
    assert exit_info.value.code == 2 and f"expected a whole number of at least 1, got {parallel!r}" in capsys.readouterr().err


def test_a_first_round_at_another_learning_rate_is_its_own_dense_cell():
    args = argparse.Namespace(model="m", tasks=["mrpc"], methods=["fwsvd", "rankdyna"], budgets=[0.25], seeds=[1],
                              lrs=[1e-4, 2e-5], epochs=3.0, max_seq_length=128, max_train_samples=[], max_steps=-1,
                              first_round_lr=5e-5)
    cells = list(glue.grid(args))
    assert [(c.method, c.learning_rate, c.first_round_lr) for c in cells] == [
        ("dense", 5e-5, None), ("fwsvd", 1e-4, 5e-5), ("rankdyna", 1e-4, None),  # the dense cell once, first
        ("fwsvd", 2e-5, 5e-5), ("rankdyna", 2e-5, None)]
    fwsvd = cells[1]
    assert fwsvd.dense == cells[0] and fwsvd.name == "mrpc-fwsvd-0.25-s1-lr0.0001-r1lr5e-05"
    assert fwsvd.portable["first_round_lr"] == 5e-5
    assert "first_round_lr" not in cells[2].portable  # cells without it keep the keys they were recorded with
    assert cells[2].key == glue.Cell("m", "mrpc", "rankdyna", 0.25, 1, 1e-4, 3.0, 128, None, -1).key


def test_the_grid_trains_the_second_round_alone_at_its_learning_rate(tmp_path, tiny_glue_model, glue_dir):
    runs = str(tmp_path / "runs.jsonl")
    common = ["run", "--model", tiny_glue_model, "--tasks", "mrpc", "--budgets", "0.5", "--seeds", "1",
              "--max-steps", "2", "--max-seq-length", "32", "--max-train-samples", "mrpc=32", "--glue-dir", glue_dir,
              "--work-dir", str(tmp_path / "work"), "--runs", runs, "--methods", "fwsvd", "--lrs", "1e-4",
              "--first-round-lr", "5e-5"]
    with pytest.raises(SystemExit, match="drop --no-reuse"):
        glue.main([*common, "--no-reuse"])
    assert glue.main(common) == 0
    dense, fwsvd = sorted(glue.read_lines(runs), key=lambda r: r["cell"]["method"])
    assert (dense["cell"]["learning_rate"], "first_round_lr" in dense["cell"]) == (5e-5, False)
    assert (fwsvd["cell"]["learning_rate"], fwsvd["cell"]["first_round_lr"]) == (1e-4, 5e-5)
    assert "--lr 0.0001" in fwsvd["command"] and "--finetuned-model" in fwsvd["command"]
    assert fwsvd["first_round"]["key"] == dense["key"] and "--lr 5e-05" in dense["command"]
