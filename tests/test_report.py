import json

import pytest
import torch
from conftest import tiny_model, trained_model, word_tokenizer, wrapped_model


from peft_rankdyna.jobs.cli import main
from peft_rankdyna.accounting import matrix_table, model_report


def test_dense_model_report():
    model = tiny_model()
    report = model_report(model, seq_len=16)
    assert len(report["matrices"]) == 12
    assert report["target_params"] == report["target_params_dense"] == 2 * (4 * 32 * 32 + 2 * 32 * 48)
    assert report["model_params"] == sum(p.numel() for p in model.parameters())
    assert report["attention_flops_per_token"] == 4 * 16 * 32 * 2
    assert report["flops_ratio"] == 1.0


def _hand_ranked_model():
    """Tiny BERT (hidden 32, FFN 48, 2 layers) with ranks set by hand: attention 4, FFN in 4, FFN out 40."""
    model = wrapped_model(total_step=20, target_budget=0.5)
    for name, layer in model.base_model.rankdyna_layers().items():
        rank = 40 if name.endswith("output.dense") and "attention" not in name else 4
        layer.set_mask(torch.arange(layer.initial_rank) < min(rank, layer.initial_rank))
    return model.eval()


# By hand, per layer: Q, K, V, attention out 32×32 at rank 4 → 4·(32+32) = 256 each; FFN in (48 out, 32 in) at
# rank 4 → 4·80 = 320; FFN out (32 out, 48 in) keeps all 32 groups (40 asked, past break-even ⌈1536/80⌉ = 20)
# → stored dense, 1536. Two layers: 2·(4·256 + 320 + 1536) = 5760 of 2·(4·1024 + 2·1536) = 14336.
HAND_TARGET, HAND_DENSE = 5760, 14336


def test_training_and_compact_reports_match_a_hand_count():
    model = _hand_ranked_model()
    during = model_report(model, seq_len=16)
    assert during["target_params"] == HAND_TARGET and during["target_params_dense"] == HAND_DENSE
    compact = model.merge_and_unload()
    after = model_report(compact, seq_len=16)
    assert after["target_params"] == HAND_TARGET
    assert after["model_params"] == sum(p.numel() for p in compact.parameters())
    attention = 4 * 32 * 2 * 16  # 4 · hidden · layers · seq_len
    assert after["attention_flops_per_token"] == attention
    assert after["linear_flops_per_token"] == 2 * HAND_TARGET == 11520
    assert after["flops_ratio"] == (11520 + attention) / (2 * HAND_DENSE + attention) == 15616 / 32768
    forms = {row["name"].split("layer.0.")[-1]: row["form"] for row in after["matrices"] if "layer.0." in row["name"]}
    assert forms == {"attention.self.query": "factored", "attention.self.key": "factored",
                     "attention.self.value": "factored", "attention.output.dense": "factored",
                     "intermediate.dense": "factored", "output.dense": "dense"}


def test_rows_are_in_layer_then_kind_order():
    rows = matrix_table(tiny_model())
    assert [(r.layer, r.kind) for r in rows[:6]] == [(0, "Q"), (0, "K"), (0, "V"), (0, "attn out"), (0, "FFN in"),
                                                     (0, "FFN out")]


def test_report_cli_prints_and_writes_json(tmp_path, capsys):
    trained_model().merge_and_unload().save_pretrained(tmp_path / "c")
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
    from peft_rankdyna.jobs.plots import plot_history, plot_rank_heatmap

    rows = matrix_table(trained_model().merge_and_unload())
    history = [{"step": s, "budget": 1000 - 50 * s, "kept_params": 990 - 50 * s,
                "ranks": {r.name: max(r.rank, 10 - s) for r in rows}} for s in range(5)]
    for path in (plot_rank_heatmap(rows, str(tmp_path / "h.png")), plot_history(history, 1000, str(tmp_path / "b.png"))):
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_evaluate_cli_scores_a_compact_folder(tmp_path, capsys, glue_dir):

    trained_model().merge_and_unload().save_pretrained(tmp_path / "c", tokenizer=word_tokenizer(tmp_path))
    assert main(["evaluate", str(tmp_path / "c"), "--task", "mrpc", "--glue-dir", glue_dir, "--max-seq-length", "64"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("accuracy 0.") and "f1 " in printed
