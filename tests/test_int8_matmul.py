"""The factor-pair timing benchmark: its graphs compute what they time, and every shape and rank gets a row."""

import json

import numpy as np
import pytest
from conftest import load_benchmark

int8_matmul = load_benchmark("int8_matmul")


def test_a_pair_graph_multiplies_its_factors_in_order(tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    path = int8_matmul.matmul_graph([(6, 2), (2, 5)], str(tmp_path / "pair.onnx"))
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    found = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    np.testing.assert_allclose(found, x @ weights["W0"] @ weights["W1"], rtol=1e-5, atol=1e-6)
    assert weights["W0"].shape == (6, 2) and weights["W1"].shape == (2, 5)


def test_the_int8_graph_holds_int8_weights_with_one_scale_per_output_channel(tmp_path):
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(int8_matmul.quantized(int8_matmul.matmul_graph([(8, 6)], str(tmp_path / "dense.onnx")))).graph
    assert "MatMulInteger" in {node.op_type for node in graph.node}
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    assert any(w.dtype == np.int8 and w.shape == (8, 6) for w in weights.values())
    assert any(name.endswith("_scale") and w.shape == (6,) for name, w in weights.items())


def test_every_shape_and_rank_below_full_gets_both_ratios(tmp_path):
    out = str(tmp_path / "mm")
    assert int8_matmul.main(["--out", out, "--hidden", "16", "--intermediate", "32", "--ranks", "4", "8", "16",
                             "--tokens", "8", "--runs", "2", "--repeats", "1", "--threads", "1"]) == 0
    rows = json.load(open(out + ".json", encoding="utf-8"))["rows"]
    # rank 16 is full rank of the 16×16 and 16×32 matrices (no pair there), below it for none: 3 shapes × 2 ranks
    assert [(tuple(r["shape"]), r["rank"]) for r in rows] == [((16, 16), 4), ((16, 16), 8), ((16, 32), 4),
                                                               ((16, 32), 8), ((32, 16), 4), ((32, 16), 8)]
    for row in rows:
        assert row["flop_fraction"] == pytest.approx(row["rank"] * sum(row["shape"]) / (row["shape"][0] * row["shape"][1]))
        for precision in ("fp32", "int8"):
            assert row[f"{precision}_ratio"] == pytest.approx(row[f"{precision}_pair_ms"] / row[f"{precision}_dense_ms"])
    text = open(out + ".md", encoding="utf-8").read()
    assert "| 16×32 | 8 | 0.75 |" in text and "python benchmarks/int8_matmul.py --out" in text
