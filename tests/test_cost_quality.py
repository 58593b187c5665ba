"""The quality-per-training-cost summary: one row per setting, duplicates and unknown CPU times said out loud."""

import json

import pytest
from conftest import load_benchmark

cost_quality = load_benchmark("cost_quality")


def _record(task, method, budget, seed, value, epochs=3.0, cpu=100.0, **extra):
    """A `glue.py run` record with the fields the summary reads."""
    cell = dict(model="$MODEL", task=task, method=method, budget=budget, seed=seed, learning_rate=5e-5,
                epochs=epochs, max_seq_length=128, max_train_samples=None, max_steps=-1)
    metric = {"mrpc": "accuracy", "cola": "matthews_correlation"}[task]
    record = {"key": json.dumps(cell, sort_keys=True), "cell": cell, "metrics": {metric: value, "f1": 0.5},
              "pipeline_wall_s": 50.0, "process_wall_s": 50.0, "process_cpu_s": cpu, "device": "cpu",
              "parallel": 1, "threads": "1", "collapsed": False, "command": f"rankdyna compress {method}",
              "commit": "abc1234", **extra}
    if cpu is None:  # a run recorded before CPU time was measured
        del record["process_cpu_s"]
    return record


def _write(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)


@pytest.fixture
def runs_files(tmp_path):
    """Two runs files: MRPC with RankDyna at 3 and 6 epochs (the 6-epoch runs score better and cost more),
    a two-round FWSVD cell, an `_old` ablation; CoLA with an FWSVD run that recorded no CPU time; the
    second file repeats one MRPC cell with another score."""
    first_round = {"first_round": {"key": "k", "command": "c"}}
    first = [
        *(_record("mrpc", "dense", None, seed, 0.80 + seed / 100, cpu=300.0) for seed in (1, 2)),
        *(_record("mrpc", "rankdyna", 0.5, seed, value, cpu=cpu)
          for seed, value, cpu in ((1, 0.70, 290.0), (2, 0.72, 300.0), (3, 0.74, 310.0))),
        *(_record("mrpc", "rankdyna", 0.5, seed, value, epochs=6.0, cpu=cpu)
          for seed, value, cpu in ((1, 0.80, 590.0), (2, 0.82, 600.0), (3, 0.84, 610.0))),
        _record("mrpc", "fwsvd", 0.5, 1, 0.78, cpu=650.0, **first_round),
        _record("mrpc", "rankdyna_old", 0.5, 1, 0.10),
        *(_record("cola", "rankdyna", 0.25, seed, 0.20 + seed / 100) for seed in (1, 2)),
        _record("cola", "fwsvd", 0.25, 1, 0.15, cpu=None), _record("cola", "fwsvd", 0.25, 2, 0.17, cpu=650.0),
    ]
    second = [_record("mrpc", "rankdyna", 0.5, 1, 0.99, cpu=5.0)]  # the same cell as in the first file
    return _write(tmp_path / "a.jsonl", first), _write(tmp_path / "b.jsonl", second)


def test_summary_keeps_every_setting_apart_and_says_what_it_left_out(tmp_path, runs_files, capsys, monkeypatch):
    import matplotlib.figure

    saved, savefig = [], matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda figure, path, **kw: (saved.append(figure), savefig(figure, path, **kw)))
    out = str(tmp_path / "summary" / "cq")
    assert cost_quality.main(["--runs", *runs_files, "--out", out, "--note", "a caveat"]) == 0
    err = capsys.readouterr().err
    summary = json.load(open(out + ".json", encoding="utf-8"))
    rows = {(r["task"], r["method"], r["budget"], r["setting"]["epochs"]): r for r in summary["rows"]}
    assert set(rows) == {("mrpc", "dense", None, 3.0), ("mrpc", "rankdyna", 0.5, 3.0), ("mrpc", "rankdyna", 0.5, 6.0),
                         ("mrpc", "fwsvd", 0.5, 3.0), ("cola", "rankdyna", 0.25, 3.0), ("cola", "fwsvd", 0.25, 3.0)}
    # 3 and 6 epochs are two settings, each its own mean: never one averaged row, never the better one alone.
    three, six = rows[("mrpc", "rankdyna", 0.5, 3.0)], rows[("mrpc", "rankdyna", 0.5, 6.0)]
    assert (three["seeds"], three["mean"], three["std"], three["cpu_s"]) == ([1, 2, 3], pytest.approx(0.72),
                                                                             pytest.approx(0.02), pytest.approx(300))
    assert (six["seeds"], six["mean"], six["cpu_s"], six["length"]) == ([1, 2, 3], pytest.approx(0.82),
                                                                         pytest.approx(600), "6 ep")
    assert rows[("mrpc", "fwsvd", 0.5, 3.0)]["length"] == "3 + 3 ep" and three["metric"] == "accuracy"
    assert rows[("mrpc", "dense", None, 3.0)]["std"] == pytest.approx(0.00707, abs=1e-4)
    # The repeated cell: the first file's run is kept (mean 0.72, not with 0.99), and the choice is printed.
    assert "mrpc rankdyna 0.5 3 ep seed 1 is recorded in both" in err and "kept the first" in err
    assert any("recorded in both" in warning for warning in summary["warnings"])
    # One of two runs recorded no CPU time: the setting's CPU time is unknown (not the other seed's), a warning,
    # and no point in the plot.
    unknown = rows[("cola", "fwsvd", 0.25, 3.0)]
    assert unknown["cpu_s"] is None and unknown["mean"] == pytest.approx(0.16)
    assert unknown["metric"] == "matthews_correlation"
    assert "cola fwsvd 0.25 3 + 3 ep: CPU time unknown" in err
    text = open(out + ".md", encoding="utf-8").read()
    assert "Every row is one setting" in text and "**Note:** a caveat" in text and "--note 'a caveat'" in text
    assert ("| 0.25 | FWSVD + FT | 3 + 3 ep | 2 | 0.1600 ± 0.0141 | 1: 0.1500, 2: 0.1700 | unknown (1 of 2 recorded) |"
            in text)
    assert "| 0.5 | RankDyna | 3 ep | 3 | 0.7200 ± 0.0200 | 1: 0.7000, 2: 0.7200, 3: 0.7400 | 300 |" in text
    assert "| 0.5 | RankDyna | 6 ep | 3 | 0.8200 ± 0.0200 |" in text
    assert "| 0.5 | FWSVD + FT † | 3 + 3 ep | 1 | 0.7800 ± — |" in text
    assert "RankDyna, old defaults" not in text  # the ablations only when named
    assert (tmp_path / "summary" / "cq.png").stat().st_size > 0
    cola, mrpc = saved[0].axes[:2]
    lines = {label: handle for axis in (cola, mrpc) for handle, label in zip(*axis.get_legend_handles_labels())}
    assert "FWSVD + FT, budget 0.25" not in lines and "RankDyna, budget 0.25" in lines
    rankdyna = lines["RankDyna, budget 0.5"].lines[0]  # one line through both settings, cheaper first
    assert list(rankdyna.get_xdata()) == pytest.approx([300, 600])
    assert list(rankdyna.get_ydata()) == pytest.approx([0.72, 0.82])
    assert list(lines["dense fine-tuning"].lines[0].get_ydata()) == pytest.approx([0.815])


def test_settings_that_differ_beyond_the_length_get_a_column_and_are_not_merged(tmp_path):
    records = [_record("mrpc", "rankdyna", 0.5, seed, value) for seed, value in ((1, 0.7), (2, 0.8))]
    other_lr = [_record("mrpc", "rankdyna", 0.5, 1, 0.6)]
    other_lr[0]["cell"]["learning_rate"] = 1e-4
    other_lr[0]["key"] = json.dumps(other_lr[0]["cell"], sort_keys=True)
    out = str(tmp_path / "cq")
    assert cost_quality.main(["--runs", _write(tmp_path / "a.jsonl", records + other_lr), "--out", out]) == 0
    rows = json.load(open(out + ".json", encoding="utf-8"))["rows"]
    assert [(row["other_settings"], row["seeds"], row["mean"]) for row in rows] == [
        ("lr 5e-05", [1, 2], pytest.approx(0.75)), ("lr 0.0001", [1], pytest.approx(0.6))]
    assert "| other settings |" in open(out + ".md", encoding="utf-8").read()


def test_a_missing_runs_file_is_an_error_not_an_empty_grid(tmp_path):
    with pytest.raises(SystemExit, match="No runs file at"):
        cost_quality.main(["--runs", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "cq")])


def test_each_rankdyna_setting_is_compared_with_fwsvd_ft_seed_by_seed(tmp_path, runs_files):
    """Only the seeds both ran are paired; a reference of another length or learning rate is no reference;
    a CPU ratio is given only where every paired seed recorded its time."""
    other_lr = _record("mrpc", "fwsvd", 0.5, 2, 0.99, cpu=10.0)  # seed 2 of FWSVD + FT, but at another lr
    other_lr["cell"]["learning_rate"] = 1e-4
    other_lr["key"] = json.dumps(other_lr["cell"], sort_keys=True)
    longer = _record("mrpc", "fwsvd", 0.5, 3, 0.99, epochs=6.0)  # FWSVD + FT 6 + 6: not the reference
    out = str(tmp_path / "cq")
    extra = _write(tmp_path / "extra.jsonl", [other_lr, longer])
    assert cost_quality.main(["--runs", runs_files[0], extra, "--out", out]) == 0
    found = {(c["task"], c["budget"], c["length"]): c
             for c in json.load(open(out + ".json", encoding="utf-8"))["comparisons"]}
    assert set(found) == {("mrpc", 0.5, "3 ep"), ("mrpc", 0.5, "6 ep"), ("cola", 0.25, "3 ep")}
    three, six, cola = found[("mrpc", 0.5, "3 ep")], found[("mrpc", 0.5, "6 ep")], found[("cola", 0.25, "3 ep")]
    assert (three["seeds"], three["deltas"], three["ahead"]) == ([1], [pytest.approx(-0.08)], 0)
    assert three["cpu_ratio"] == pytest.approx(290 / 650) and six["cpu_ratio"] == pytest.approx(590 / 650)
    assert (six["deltas"], six["ahead"], six["reference"]) == ([pytest.approx(0.02)], 1, "FWSVD + FT 3 + 3 ep")
    assert (cola["seeds"], cola["deltas"]) == ([1, 2], [pytest.approx(0.06), pytest.approx(0.05)])
    assert cola["mean_delta"] == pytest.approx(0.055) and cola["cpu_ratio"] is None  # seed 1 recorded no CPU time
    text = open(out + ".md", encoding="utf-8").read()
    assert "| mrpc | 0.5 | 6 ep | 1 | +0.0200 | +0.0200 | 1 of 1 | 0.91× |" in text
    assert "| cola | 0.25 | 3 ep | 1, 2 | +0.0600, +0.0500 | +0.0550 | 2 of 2 | unknown |" in text


def test_a_cpu_ratio_of_runs_with_other_threads_is_marked(tmp_path):
    records = [_record("mrpc", "rankdyna", 0.5, 1, 0.8, cpu=400.0, threads="2"),
               _record("mrpc", "fwsvd", 0.5, 1, 0.7, cpu=500.0)]
    out = str(tmp_path / "cq")
    assert cost_quality.main(["--runs", _write(tmp_path / "a.jsonl", records), "--out", out]) == 0
    assert "| mrpc | 0.5 | 3 ep | 1 | +0.1000 | +0.1000 | 1 of 1 | 0.80× ≠ |" in open(out + ".md", encoding="utf-8").read()


def test_the_cpu_ratio_and_its_marks_come_from_the_paired_seeds_alone(tmp_path):
    """Seed 3 of RankDyna has no FWSVD + FT partner: its missing CPU time, its shared machine and its threads
    change nothing; a tie counts as level; a paired run that shared the machine marks the ratio ‡, one that
    did not record it ?."""
    unpaired = _record("mrpc", "rankdyna", 0.5, 3, 0.9, cpu=None, parallel=2, threads="2")
    records = [_record("mrpc", "rankdyna", 0.5, 1, 0.8, cpu=300.0), _record("mrpc", "rankdyna", 0.5, 2, 0.7, cpu=500.0),
               unpaired, _record("mrpc", "fwsvd", 0.5, 1, 0.8, cpu=400.0), _record("mrpc", "fwsvd", 0.5, 2, 0.6, cpu=600.0)]
    out = str(tmp_path / "cq")
    assert cost_quality.main(["--runs", _write(tmp_path / "a.jsonl", records), "--out", out]) == 0
    (found,) = json.load(open(out + ".json", encoding="utf-8"))["comparisons"]
    assert (found["seeds"], found["ahead"], found["level"]) == ([1, 2], 1, 1)
    assert found["cpu_ratio"] == pytest.approx(800 / 1000) and found["shared"] is False
    assert "| mrpc | 0.5 | 3 ep | 1, 2 | +0.0000, +0.1000 | +0.0500 | 1 of 2 (1) | 0.80× |" in open(
        out + ".md", encoding="utf-8").read()
    records[3]["parallel"] = 2
    records[4]["parallel"] = None
    assert cost_quality.main(["--runs", _write(tmp_path / "b.jsonl", records), "--out", out]) == 0
    assert json.load(open(out + ".json", encoding="utf-8"))["comparisons"][0]["shared"] is True
    records[3]["parallel"] = 1
    assert cost_quality.main(["--runs", _write(tmp_path / "c.jsonl", records), "--out", out]) == 0
    assert "| 0.80× ? |" in open(out + ".md", encoding="utf-8").read()



def test_the_default_length_table_takes_the_default_rounds_and_checks_the_expectations(tmp_path):
    fwsvd = {"first_round": {"key": "k", "command": "c"}}
    records = [
        # MRPC: 3 epochs behind FWSVD + FT, 6 epochs (the default) ahead by 2 points at 0.6x its CPU time.
        *(_record("mrpc", "fwsvd", 0.25, seed, 0.75, cpu=1000.0, **fwsvd) for seed in (1, 2)),
        *(_record("mrpc", "rankdyna", 0.25, seed, 0.73, cpu=300.0) for seed in (1, 2)),
        *(_record("mrpc", "rankdyna", 0.25, seed, 0.77, epochs=6.0, cpu=600.0) for seed in (1, 2)),
        # CoLA: 6 epochs ahead by half a point at 0.9x the CPU time.
        *(_record("cola", "fwsvd", 0.25, seed, 0.20, cpu=1000.0, **fwsvd) for seed in (1, 2)),
        *(_record("cola", "rankdyna", 0.25, seed, 0.205, epochs=6.0, cpu=900.0) for seed in (1, 2)),
    ]
    other_lr = _record("mrpc", "rankdyna", 0.25, 1, 0.99, epochs=6.0)  # not the default learning rate: left out
    other_lr["cell"]["learning_rate"] = 1e-4
    other_lr["key"] = json.dumps(other_lr["cell"], sort_keys=True)
    runs = _write(tmp_path / "runs.jsonl", [*records, other_lr])
    out = str(tmp_path / "cq")
    assert cost_quality.main(["--runs", runs, "--out", out]) == 0
    chosen = json.load(open(out + ".json", encoding="utf-8"))["default_length"]
    assert [(c["task"], c["length"], c["setting"]["learning_rate"]) for c in chosen] == [
        ("cola", "6 ep", 5e-5), ("mrpc", "6 ep", 5e-5)]
    assert [round(c["mean_delta"], 4) for c in chosen] == [0.005, 0.02]
    text = open(out + ".md", encoding="utf-8").read()
    assert "- mean at least the reference's on every task and budget: yes" in text
    assert "- ahead by at least 1 point at budget 0.25 on at least two tasks: no (mrpc)" in text
    assert "- at most 0.8× the reference's CPU time: no: cola 0.25 (0.90×)" in text
    three = _write(tmp_path / "three.jsonl", [r for r in records if r["cell"]["epochs"] == 3.0])
    assert cost_quality.main(["--runs", three, "--out", out]) == 0  # no default-length round: said so
    assert "No RankDyna setting here trains at its default length." in open(out + ".md", encoding="utf-8").read()


def test_rankdyna_at_another_learning_rate_pairs_with_the_references_second_round_at_it(tmp_path):
    def at_lr(record, lr, first_round_lr=None):
        record["cell"]["learning_rate"] = lr
        if first_round_lr is not None:
            record["cell"]["first_round_lr"] = first_round_lr
        record["key"] = json.dumps(record["cell"], sort_keys=True)
        return record

    fwsvd = {"first_round": {"key": "k", "command": "c"}}
    records = [at_lr(_record("mrpc", "fwsvd", 0.25, 1, 0.70, **fwsvd), 1e-4, 5e-5),
               at_lr(_record("mrpc", "rankdyna", 0.25, 1, 0.75), 1e-4),
               _record("mrpc", "fwsvd", 0.25, 1, 0.72, **fwsvd), _record("mrpc", "rankdyna", 0.25, 1, 0.71)]
    rows = cost_quality.group_runs([{**r, "file": "f"} for r in records], [])
    pairs = {(c["setting"]["learning_rate"], round(c["mean_delta"], 4)) for c in cost_quality.paired_comparisons(rows)}
    assert pairs == {(1e-4, 0.05), (5e-5, -0.01)}
    labels = {c["setting"]["learning_rate"]: c["reference"] for c in cost_quality.paired_comparisons(rows)}
    assert labels == {1e-4: "FWSVD + FT 3 + 3 ep, first round at lr 5e-05", 5e-5: "FWSVD + FT 3 + 3 ep"}
    both_rounds = at_lr(_record("mrpc", "fwsvd", 0.25, 1, 0.60, **fwsvd), 1e-4)  # both rounds at 1e-4: ambiguous
    rows = cost_quality.group_runs([{**r, "file": "f"} for r in [*records, both_rounds]], [])
    with pytest.raises(SystemExit, match="differ only in their first round's learning rate"):
        cost_quality.paired_comparisons(rows)
