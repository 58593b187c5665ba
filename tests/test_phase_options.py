"""The §5 summary: each option paired with the default run of the same setting and seed, nothing dropped quietly."""

import json

import pytest
from conftest import load_benchmark

phase_options = load_benchmark("phase_options")


def _record(method, seed, value, lr=5e-5, cpu=100.0, parallel=1, task="mrpc", commit="abc1234", device="cpu",
            collapsed=False):
    """A `glue.py run` record with the fields the summary reads."""
    cell = dict(model="$MODEL", task=task, method=method, budget=0.25, seed=seed, learning_rate=lr, epochs=3.0,
                max_seq_length=128, max_train_samples=None, max_steps=-1)
    metric = {"mrpc": "accuracy", "cola": "matthews_correlation"}[task]
    return {"key": json.dumps(cell, sort_keys=True), "cell": cell, "metrics": {metric: value},
            "pipeline_wall_s": 50.0, "process_cpu_s": cpu, "device": device, "parallel": parallel, "threads": "1",
            "host": "vm", "collapsed": collapsed, "commit": commit, "command": f"rankdyna compress {method} {seed}"}


@pytest.fixture
def runs_file(tmp_path):
    records = [
        *(_record("rankdyna", seed, value, collapsed=seed == 3) for seed, value in ((1, 0.70), (2, 0.72), (3, 0.74))),
        _record("rankdyna", 1, 0.50, lr=1e-4),  # another setting: never a partner of the 5e-5 runs
        # the restart wins seeds 1 and 2 and loses seed 3; ran alone, so its CPU time compares
        *(_record("rankdyna_lr_restart", seed, value, cpu=110.0)
          for seed, value in ((1, 0.75), (2, 0.73), (3, 0.70))),
        # self-distillation shared the machine: no CPU ratio; seed 4 has no default run
        *(_record("rankdyna_self_distill", seed, 0.71, parallel=2, commit="def5678") for seed in (1, 4)),
        _record("rankdyna_long_final", 2, 0.40, lr=1e-4),  # no 1e-4 default at seed 2
    ]
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)


def test_options_are_paired_seed_by_seed_and_unpaired_runs_are_said(tmp_path, runs_file, capsys):
    out = str(tmp_path / "po")
    assert phase_options.main(["--runs", runs_file, "--out", out]) == 0
    summary = json.load(open(out + ".json", encoding="utf-8"))
    rows = {row["method"]: row for row in summary["rows"]}
    assert set(rows) == {"rankdyna_lr_restart", "rankdyna_self_distill"}
    restart = rows["rankdyna_lr_restart"]
    assert [d["delta"] for d in restart["deltas"]] == pytest.approx([0.05, 0.01, -0.04])
    assert restart["delta_mean"] == pytest.approx(0.02 / 3)
    assert (restart["wins"], restart["losses"]) == (2, 1)
    assert restart["default_mean"] == pytest.approx(0.72)
    assert restart["cpu_ratio"] == pytest.approx(1.1)
    assert (restart["collapsed_option"], restart["collapsed_default"], restart["same_code"]) == (0, 1, True)
    distill = rows["rankdyna_self_distill"]
    assert distill["seeds"] == [1] and distill["cpu_ratio"] is None  # shared machine: not like for like
    assert not distill["same_code"] and distill["commits"] == ["def5678 / abc1234"]
    err = capsys.readouterr().err
    assert "seed 4: no rankdyna run with the same setting and seed" in err
    assert any("rankdyna_long_final" in warning for warning in summary["warnings"])
    text = open(out + ".md", encoding="utf-8").read()
    assert "+0.0500" in text and "2 of 3" in text and "not like for like" in text and "⚠ 0, 1" in text
    assert "no: def5678 / abc1234" in text
    assert any("other commits" in warning for warning in summary["warnings"])
    assert (tmp_path / "po.png").stat().st_size > 0


def test_runs_of_two_kinds_of_hardware_are_refused(tmp_path):
    path = tmp_path / "runs.jsonl"
    records = [_record("rankdyna", 1, 0.7), _record("rankdyna_lr_restart", 1, 0.8, device="NVIDIA H200")]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    with pytest.raises(SystemExit, match="summarise each kind of hardware on its own"):
        phase_options.main(["--runs", str(path), "--out", str(tmp_path / "po")])


def test_no_pair_is_an_error(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps(_record("rankdyna_lr_restart", 1, 0.7)) + "\n")
    with pytest.raises(SystemExit, match="with a rankdyna partner"):
        phase_options.main(["--runs", str(path), "--out", str(tmp_path / "po")])
    with pytest.raises(SystemExit, match="also among --options"):
        phase_options.main(["--runs", str(path), "--out", str(tmp_path / "po"), "--options", "rankdyna"])
