"""Latency benchmark: ratios and choice on known timings; a real run on a tiny model in seconds."""

import json

import pytest
from conftest import tiny_compact_folder, tiny_model

pytest.importorskip("optimum.exporters.onnx", reason="pip install 'peft-rankdyna[onnx]'")

import onnx  # noqa: E402

from rankdyna_exporters import runtime  # noqa: E402
from rankdyna_exporters.bench import (  # noqa: E402
    ONNX_DENSE_INT8,
    ONNX_DENSE_ORT,
    ONNX_DENSE_RAW,
    PYTORCH_DENSE,
    BenchSettings,
    Variant,
    benchmark,
    choose,
    summarize,
)


def test_ratios_are_against_the_faster_dense_graph_of_the_same_shape():
    variants = [Variant(PYTORCH_DENSE, "torch", "x"), Variant(ONNX_DENSE_RAW, "onnx", "a"),
                Variant(ONNX_DENSE_ORT, "onnx", "b"), Variant("c fused", "onnx", "c", group="c")]
    samples = {PYTORCH_DENSE: {"8x128": [0.5] * 3}, ONNX_DENSE_RAW: {"8x128": [0.2, 0.1, 0.3]},
               ONNX_DENSE_ORT: {"8x128": [0.25] * 3}, "c fused": {"8x128": [0.05, 0.06, 0.04]}}
    rows = {r["variant"]: r for r in summarize(variants, samples, {("c", 128): 0.4})}
    assert rows[ONNX_DENSE_RAW]["median_ms"] == pytest.approx(200)
    assert rows["c fused"]["latency_ratio"] == pytest.approx(0.25)
    assert rows["c fused"]["flops_ratio"] == 0.4 and rows[PYTORCH_DENSE]["flops_ratio"] == 1.0
    assert rows["c fused"]["sequences_per_s"] == pytest.approx(8 / 0.05)
    assert rows["c fused"]["p90_ms"] == pytest.approx(60)


def test_choice_is_the_fastest_graph_of_the_export_and_says_why():
    rows = [{"variant": "e portable", "group": "e", "batch_size": 8, "seq_len": 128, "median_ms": 30.0},
            {"variant": "e fused", "group": "e", "batch_size": 8, "seq_len": 128, "median_ms": 20.0},
            {"variant": "e fused", "group": "e", "batch_size": 1, "seq_len": 128, "median_ms": 50.0}]
    chosen = choose(rows, "e", 8, 128)
    assert chosen["variant"] == "fused" and "20.00 ms" in chosen["why"] and "e portable 30.00 ms" in chosen["why"]
    with pytest.raises(ValueError, match="No compact graph"):
        choose(rows, "e", 32, 128)


def test_benchmark_runs_on_a_tiny_model(tmp_path):
    from rankdyna_exporters.export import export

    export(tiny_compact_folder(str(tmp_path / "compact")), tmp_path / "onnx", int8=True)
    tiny_model().save_pretrained(tmp_path / "dense")
    settings = BenchSettings(batch_sizes=(1, 2), seq_lens=(16,), rounds=1, runs_per_round=3, warmup=1, threads=1)
    results = benchmark([str(tmp_path / "onnx")], str(tmp_path / "dense"), settings, str(tmp_path / "lat"),
                        "rankdyna bench ...", str(tmp_path / "work"), choose_shape=(2, 16))
    rows = results["rows"]
    assert {r["variant"] for r in rows} == {PYTORCH_DENSE, ONNX_DENSE_RAW, ONNX_DENSE_ORT, ONNX_DENSE_INT8,
                                           "onnx portable", "onnx fused", "onnx fused_ort", "onnx int8"}
    assert all(r["runs"] == 3 and r["median_ms"] > 0 for r in rows) and len(rows) == 16
    dense_int8 = onnx.load(str(next((tmp_path / "work").glob("dense-*/model_int8.onnx"))), load_external_data=False)
    assert "MatMulInteger" in {node.op_type for node in dense_int8.graph.node}
    for row in rows:  # every ratio is over the fastest dense ONNX graph at the same shape
        fastest = min(r["median_ms"] for r in rows if r["variant"] in (ONNX_DENSE_RAW, ONNX_DENSE_ORT, ONNX_DENSE_INT8)
                      and (r["batch_size"], r["seq_len"]) == (row["batch_size"], row["seq_len"]))
        assert row["latency_ratio"] == pytest.approx(row["median_ms"] / fastest)
    chosen = json.loads((tmp_path / "onnx" / "rankdyna_export.json").read_text())["chosen"]["CPUExecutionProvider"]
    assert chosen["file"].endswith(".onnx") and chosen["shape"] == [2, 16]
    text = (tmp_path / "lat.md").read_text()
    assert "Command: `rankdyna bench ...`" in text and "CPUExecutionProvider" in text
    assert runtime.chosen_graph(str(tmp_path / "onnx"), runtime.CPU).endswith(chosen["file"])
    assert runtime.chosen_graph(str(tmp_path / "onnx"), runtime.CUDA).endswith("model.onnx")  # nothing measured


def test_cli_bench_refuses_a_choice_outside_the_timed_shapes(tmp_path, capsys):
    from peft_rankdyna.jobs.cli import main

    code = main(["bench", str(tmp_path), "--dense-model", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--batch-sizes", "1", "--choose", "8", "128"])
    assert code == 2 and "not among the timed shapes" in capsys.readouterr().err


@pytest.mark.gpu
def test_benchmark_on_cuda_uses_io_binding(tmp_path):
    if not runtime.cuda_available():
        pytest.skip("needs onnxruntime-gpu and a CUDA device")
    from rankdyna_exporters.export import export

    export(tiny_compact_folder(str(tmp_path / "compact")), tmp_path / "onnx", fp16=True)
    tiny_model().save_pretrained(tmp_path / "dense")
    settings = BenchSettings(batch_sizes=(2,), seq_lens=(16,), rounds=1, runs_per_round=3, warmup=1,
                             provider=runtime.CUDA)
    results = benchmark([str(tmp_path / "onnx")], str(tmp_path / "dense"), settings, str(tmp_path / "lat"),
                        "rankdyna bench ...", str(tmp_path / "work"))
    assert "onnx fp16" in {r["variant"] for r in results["rows"]} and "gpu" in results["environment"]
