import json

import pytest
import torch
from conftest import tiny_model
from test_compact import _trained

from peft_rankdyna.cli import main
from peft_rankdyna.report import matrix_table, model_report


def test_dense_model_report():
    model = tiny_model()
    report = model_report(model, seq_len=16)
    assert len(report["matrices"]) == 12
    assert report["target_params"] == report["target_params_dense"] == 2 * (4 * 32 * 32 + 2 * 32 * 48)
    assert report["model_params"] == sum(p.numel() for p in model.parameters())
    assert report["attention_flops_per_token"] == 4 * 16 * 32 * 2
    assert report["flops_ratio"] == 1.0


def test_training_and_compact_reports_agree_on_ranks():
    model = _trained()
    during = model_report(model)
    assert during["target_params"] == model.base_model.kept_params()
    ranks = model.base_model.ranks()
    compact = model.merge_and_unload()
    after = model_report(compact)
    assert {row["name"]: row["rank"] for row in after["matrices"]} == ranks
    assert after["model_params"] == sum(p.numel() for p in compact.parameters())
    factored_weights = sum(m.weight.numel() for n in ranks for m in compact.get_submodule(n).modules()
                           if isinstance(m, torch.nn.Linear))
    assert after["target_params"] == factored_weights <= during["target_params"]
    attention = after["attention_flops_per_token"]
    expected_ratio = (2 * after["target_params"] + attention) / (2 * after["target_params_dense"] + attention)
    assert after["flops_ratio"] == pytest.approx(expected_ratio) and after["flops_ratio"] < 1
    assert after["linear_flops_per_token"] == 2 * after["target_params"]


def test_rows_are_in_layer_then_kind_order():
    rows = matrix_table(tiny_model())
    assert [(r.layer, r.kind) for r in rows[:6]] == [(0, "Q"), (0, "K"), (0, "V"), (0, "attn out"), (0, "FFN in"),
                                                     (0, "FFN out")]


def test_report_cli_prints_and_writes_json(tmp_path, capsys):
    _trained().merge_and_unload().save_pretrained(tmp_path / "c")
    assert main(["report", str(tmp_path / "c"), "--json", str(tmp_path / "r.json"), "--seq-len", "64"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["seq_len"] == 64 and report["file_size_bytes"] == (tmp_path / "c" / "model.rankdyna.safetensors").stat().st_size
    assert "bert.encoder.layer.1.output.dense" in printed and "weights on disk" in printed


def test_report_of_a_folder_that_is_not_a_model(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "neither a model" in capsys.readouterr().err


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    from peft_rankdyna.plots import plot_history, plot_rank_heatmap

    rows = matrix_table(_trained().merge_and_unload())
    history = [{"step": s, "budget": 1000 - 50 * s, "kept_params": 990 - 50 * s,
                "ranks": {r.name: max(r.rank, 10 - s) for r in rows}} for s in range(5)]
    for path in (plot_rank_heatmap(rows, str(tmp_path / "h.png")), plot_history(history, 1000, str(tmp_path / "b.png"))):
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_evaluate_cli_scores_a_compact_folder(tmp_path, capsys, glue_dir):
    from test_compact import _tokenizer

    _trained().merge_and_unload().save_pretrained(tmp_path / "c", tokenizer=_tokenizer(tmp_path))
    assert main(["evaluate", str(tmp_path / "c"), "--task", "mrpc", "--glue-dir", glue_dir, "--max-seq-length", "64"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("accuracy 0.") and "f1 " in printed
