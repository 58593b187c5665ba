"""benchmarks/gpu_check.py --dry-run: every step of the GPU run, on the CPU provider with tiny models."""

import json

import pytest
import torch
from conftest import load_benchmark

pytest.importorskip("onnxruntime", reason="pip install 'peft-rankdyna[onnx]'")
gpu_check = load_benchmark("gpu_check")


def test_the_dry_run_goes_through_every_step(tmp_path):
    summary = gpu_check.main(["--out", str(tmp_path), "--dry-run"])
    steps = summary["steps"]
    assert {name: step["ok"] for name, step in steps.items()} == dict.fromkeys(
        ["export", "correctness", "latency", "profile", "train_step"], True), json.dumps(steps, default=str)[-3000:]
    checked = steps["correctness"]["result"]
    assert set(checked) == {"half", "tiny mpnet"}
    assert all(graph["within_atol"] for graph in checked["half"].values() if "within_atol" in graph)
    assert checked["half"]["fp16"]["agreement"] >= 0.995
    latency = json.loads((tmp_path / "latency.json").read_text())
    variants = {row["variant"] for row in latency["rows"]}
    assert {"onnx dense (ort-optimized)", "onnx-half fused", "pytorch dense"} <= variants
    assert "| dense |" in (tmp_path / "train_step.md").read_text()
    assert json.loads((tmp_path / "summary.json").read_text())["provider"] == "CPUExecutionProvider"


def test_a_truncated_model_keeps_the_top_groups_of_every_matrix():
    model = gpu_check.dense_model(gpu_check.TINY_SHAPE)
    name = "bert.encoder.layer.0.attention.self.query"
    compact = gpu_check.truncated(model, {name: 5})
    assert compact.get_submodule(name).rank == 5 and compact.rankdyna_ranks == {name: 5}
    weight = model.get_submodule(name).weight.detach()
    U, s, Vt = torch.linalg.svd(weight, full_matrices=False)
    module = compact.get_submodule(name)
    torch.testing.assert_close(module.up.weight @ module.down.weight, (U[:, :5] * s[:5]) @ Vt[:5], atol=1e-5, rtol=1e-4)


def test_the_committed_rank_patterns_rebuild_the_compact_models_of_their_runs():
    from peft_rankdyna.accounting import model_report

    dense = gpu_check.dense_model(gpu_check.MINILM_SHAPE)
    patterns = gpu_check.rank_patterns(False, dense)
    assert set(patterns) >= {"mrpc-0.5-s42", "mrpc-0.25-s42"}
    for name, ranks in patterns.items():
        recorded = json.load(open(f"{gpu_check.PATTERNS}/{name}.json", encoding="utf-8"))
        report = model_report(gpu_check.truncated(dense, ranks))
        assert report["target_params"] == recorded["target_params"], name
        assert abs(report["flops_ratio"] - recorded["flops_ratio_seq128"]) < 1e-9, name
