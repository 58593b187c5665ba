"""The int8 CPU graph: quantized through Optimum, checked against the fp32 graph, refused when it strays."""

import json

import numpy as np
import onnx
import pytest
from conftest import tiny_compact_folder

pytest.importorskip("optimum.onnxruntime", reason="pip install 'peft-rankdyna[onnx]'")

from rankdyna_exporters import int8 as int8_module  # noqa: E402
from rankdyna_exporters.export import FILE_NAMES, FUSED, INT8, export  # noqa: E402
from rankdyna_exporters.int8 import Int8Options  # noqa: E402
from rankdyna_exporters.validation import ExportValidationError, agreement  # noqa: E402


def _ops(path):
    return [node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node]


@pytest.mark.parametrize("embeddings", [True, False])
def test_int8_graph_quantizes_every_projection_and_follows_the_fp32_graph(tmp_path, embeddings):
    folder = tiny_compact_folder(str(tmp_path / "compact"), budget=0.6)
    report = export(folder, tmp_path / "onnx", int8=True, int8_options=Int8Options(embeddings=embeddings))
    variant = report["variants"][INT8]
    ops = _ops(tmp_path / "onnx" / FILE_NAMES[INT8])
    fused = _ops(tmp_path / "onnx" / FILE_NAMES[FUSED])
    weight_products = fused.count("MatMul") + fused.count("Gemm")  # Gemm: the pooler and the classifier
    assert ops.count("MatMulInteger") == weight_products > 0 and "MatMul" not in ops and "Gemm" not in ops
    assert ops.count("MultiHeadAttention") == 2  # the fused attention stays, fed by quantized projections
    assert ("DequantizeLinear" in ops) == embeddings  # 8-bit embedding tables are dequantized on lookup
    check = variant["against_fp32"]
    assert check["against"] == FUSED and check["provider"] == "CPUExecutionProvider"
    assert check["agreement"] >= 0.99 and check["correlation"] > 0.99  # a tiny random model has few borderline cases
    assert check["output"] == "logits"
    assert variant["settings"]["operators"] == (["MatMul", "Gather"] if embeddings else ["MatMul"])
    graph = onnx.load(str(tmp_path / "onnx" / FILE_NAMES[INT8])).graph
    stored = {init.name: init.data_type for init in graph.initializer}
    weights = [node.input[1] for node in graph.node if node.op_type == "MatMulInteger"]
    assert {stored.get(name) for name in weights} == {onnx.TensorProto.INT8}  # weights stored in 8 bits
    assert variant["file_size_bytes"] == (tmp_path / "onnx" / FILE_NAMES[INT8]).stat().st_size
    saved = json.loads((tmp_path / "onnx" / "rankdyna_export.json").read_text())
    assert saved["variants"][INT8]["settings"]["per_channel"] is True


@pytest.mark.parametrize("num_labels, problem", [(2, "predicts the fp32 class on only"),
                                                 (1, "correlates with the fp32 outputs at only")])
def test_an_int8_graph_that_strays_from_fp32_is_refused_and_nothing_is_written(tmp_path, monkeypatch, num_labels,
                                                                                problem):
    from onnx import numpy_helper

    def negated_classifier(folder, source_name, target_name, options):  # a graph whose logits are negated
        model = onnx.load(f"{folder}/{source_name}")
        classifier = [node for node in model.graph.node if node.op_type == "Gemm"][-1]
        for init in model.graph.initializer:
            if init.name in classifier.input[1:]:
                init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
        onnx.save(model, f"{folder}/{target_name}")
        return {"operators": options.operators}

    monkeypatch.setattr(int8_module, "quantize", negated_classifier)
    folder = tiny_compact_folder(str(tmp_path / "compact"), num_labels=num_labels)  # 1 label: a regressor
    examples = [(f"w{i} w{i + 1} w{i + 2}", f"w{90 - i} w{3 * i % 90}") for i in range(64)]
    with pytest.raises(ExportValidationError, match=rf"int8: {problem} .* of 64 examples"):
        export(folder, tmp_path / "onnx", int8=True, int8_examples=examples)
    assert not (tmp_path / "onnx").exists()
    with pytest.raises(ValueError, match="min_agreement must be in"):
        Int8Options(min_agreement=1.5)


def test_static_int8_fixes_activation_ranges_from_calibration_examples(tmp_path):
    from rankdyna_exporters.runtime import create_session

    folder = tiny_compact_folder(str(tmp_path / "compact"), budget=0.6)
    export(folder, tmp_path / "onnx")
    onnx_dir = str(tmp_path / "onnx")
    reference = create_session(f"{onnx_dir}/{FILE_NAMES[FUSED]}")
    names = [i.name for i in reference.get_inputs()]
    rng = np.random.default_rng(0)
    feeds = [{name: (rng.integers(5, 90, (1, 12)) if name == "input_ids" else
                     np.ones((1, 12)) if name == "attention_mask" else np.zeros((1, 12))).astype(np.int64)
              for name in names} for _ in range(24)]
    options = Int8Options(calibration="minmax")
    with pytest.raises(ValueError, match="needs calibration examples"):
        int8_module.quantize(onnx_dir, FILE_NAMES[FUSED], "static.onnx", options)
    settings = int8_module.quantize(onnx_dir, FILE_NAMES[FUSED], "static.onnx", options, feeds[:16])
    assert settings["api"].endswith("(static)") and "(minmax, 16 examples)" in settings["activations"]
    ops = _ops(tmp_path / "onnx" / "static.onnx")
    # Every weight product is fed by fixed-range QuantizeLinear/DequantizeLinear pairs (fused at load time).
    assert ops.count("QuantizeLinear") >= ops.count("MatMul") > 0 and "MatMulInteger" not in ops
    check = agreement(create_session(f"{onnx_dir}/static.onnx"), reference, feeds[16:], "logits")
    assert check["correlation"] > 0.99 and check["max_abs_diff"] > 0  # close to fp32, yet quantized
    with pytest.raises(ValueError, match="calibration must be None or one of"):
        Int8Options(calibration="percentile")


def test_calibration_examples_come_from_the_training_split_one_unpadded_example_each(tmp_path, glue_dir):
    from conftest import tiny_tokenizer
    from transformers import AutoTokenizer

    from peft_rankdyna.jobs.data.glue import get_task, load_glue
    from peft_rankdyna.jobs.onnx_scoring import calibration_examples

    tiny_tokenizer(str(tmp_path))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    feeds = calibration_examples(tokenizer, "mrpc", glue_dir, ["input_ids", "attention_mask"], 256, 5)
    again = calibration_examples(tokenizer, "mrpc", glue_dir, ["input_ids", "attention_mask"], 256, 5)
    assert len(feeds) == 5 and all(f["input_ids"].shape[0] == 1 and f["attention_mask"].all() for f in feeds)
    assert len({f["input_ids"].shape for f in feeds}) > 1  # each at its own length, no padding
    assert all((a["input_ids"] == b["input_ids"]).all() for a, b in zip(feeds, again))  # seeded
    train = load_glue(get_task("mrpc"), "train", glue_dir)
    encoded = {tuple(tokenizer(a, b, truncation=True, max_length=256)["input_ids"]) for a, b in zip(*train.texts)}
    assert all(tuple(f["input_ids"][0]) in encoded for f in feeds)


class _Fixed:
    """A stand-in session whose first output is a fixed array."""

    def __init__(self, output):
        self.output = np.asarray(output, dtype=np.float32)

    def run(self, names, feeds):
        assert names in (["logits"], ["score"])
        return [self.output]


def test_agreement_counts_classes_and_correlates_outputs_without_classes():
    reference = _Fixed([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.2, 0.1]])
    flipped = _Fixed([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.1, 0.2]])
    result = agreement(flipped, reference, [{}], "logits")
    assert result["agreement"] == 0.75 and result["examples"] == 4
    assert result["max_abs_diff"] == pytest.approx(0.1)
    scores = _Fixed([[0.5], [1.5], [-0.5]])
    result = agreement(_Fixed([[0.6], [1.4], [-0.4]]), scores, [{}, {}], "score")
    assert result["agreement"] is None and result["examples"] == 6
    assert result["correlation"] == pytest.approx(np.corrcoef([0.6, 1.4, -0.4], [0.5, 1.5, -0.5])[0, 1])
    assert agreement(_Fixed([[0.5], [-1.5], [0.5]]), scores, [{}], "score")["correlation"] < 0
    assert agreement(flipped, reference, [{}], "score")["agreement"] is None  # only logits have classes


def test_cli_int8_checks_on_a_glue_dev_set_and_its_options_need_the_flag(tmp_path, capsys, glue_dir):
    from peft_rankdyna.jobs.cli import main

    folder = tiny_compact_folder(str(tmp_path / "compact"))
    assert main(["export", folder, str(tmp_path / "onnx"), "--int8", "--int8-check-task", "mrpc",
                 "--glue-dir", glue_dir, "--int8-min-agreement", "0.9", "--int8-min-rank", "16"]) == 0
    out = capsys.readouterr().out
    assert "model_fused_int8.onnx" in out and "of 408 examples (given examples)" in out
    saved = json.loads((tmp_path / "onnx" / "rankdyna_export.json").read_text())["variants"][INT8]
    assert saved["settings"]["min_agreement"] == 0.9 and saved["against_fp32"]["examples"] == 408
    assert saved["settings"]["min_rank"] == 16 and saved["settings"]["products_kept_fp32"] > 0
    ops = _ops(tmp_path / "onnx" / FILE_NAMES[INT8])  # the narrow products stay fp32, the rest are integer
    assert ops.count("MatMul") == saved["settings"]["products_kept_fp32"] and "Gemm" not in ops
    assert ops.count("MatMulInteger") > 0
    assert main(["export", folder, str(tmp_path / "o2"), "--int8-per-tensor"]) == 2
    assert "add --int8" in capsys.readouterr().err


@pytest.mark.real_model
@pytest.mark.xfail(strict=False, reason=(
    "Found failing on 2026-12-02 on a fresh install, at the previous release (e39e5a5) too: the int8 graph of the "
    "uniform-SVD MiniLM correlates 0.0954 with fp32 (per-tensor weights: 0.786) with onnxruntime 1.32.0 and "
    "1.31.1, onnx 1.23.0 and 1.23.2, numpy 2.3.5 and 2.4.6 alike; the cause is not found yet. The export refuses "
    "the graph, as it must (ExportValidationError), so nothing ships silently."))
def test_real_minilm_int8_embedding_model_follows_the_fp32_graph(tmp_path):
    from conftest import minilm_path
    from transformers import AutoModel, AutoTokenizer

    from peft_rankdyna.baselines import factor_model
    from peft_rankdyna.pooling import copy_pooling_files

    path = minilm_path()
    compact = factor_model(AutoModel.from_pretrained(path), 0.5).eval()
    compact.save_pretrained(tmp_path / "compact", tokenizer=AutoTokenizer.from_pretrained(path),
                            extra_files=lambda folder: copy_pooling_files(path, folder))
    report = export(str(tmp_path / "compact"), tmp_path / "onnx", int8=True)  # pooled: sentence_embedding checked
    check = report["variants"][INT8]["against_fp32"]
    assert check["output"] == "sentence_embedding" and check["agreement"] is None
    assert check["correlation"] >= int8_module.MIN_CORRELATION
    fused_size = (tmp_path / "onnx" / FILE_NAMES[FUSED]).stat().st_size
    assert report["variants"][INT8]["file_size_bytes"] < 0.3 * fused_size  # weights and embeddings in 8 bits


def test_int8_choices_benchmark_scores_every_candidate_against_fp32(tmp_path, monkeypatch, glue_dir):
    from conftest import load_benchmark, tiny_model, tiny_tokenizer

    choices = load_benchmark("int8_choices")
    compact = tiny_compact_folder(str(tmp_path / "run" / "compact"))
    tiny_model().save_pretrained(tmp_path / "dense" / "finetuned")
    tiny_tokenizer(str(tmp_path / "dense" / "finetuned"))
    monkeypatch.setattr("sys.argv", ["int8_choices.py", compact, "--dense", str(tmp_path / "dense" / "finetuned"),
                                     "--task", "mrpc", "--glue-dir", glue_dir, "--out", str(tmp_path / "c"),
                                     "--work-dir", str(tmp_path / "work"), "--time"])
    timed = {}  # what the (fake) timing gave each graph, by candidate: distinct values, so ratios are checkable

    def fake_latencies(paths):
        timed[len(timed)] = {name: 2.0 + 3 * i for i, name in enumerate(paths)}
        return timed[len(timed) - 1]

    monkeypatch.setattr(choices, "latencies", fake_latencies)
    choices.main()
    result = json.loads((tmp_path / "c.json").read_text())
    by_model = {}
    for row in result["rows"]:
        by_model.setdefault(row["model"], []).append(row)
    dense, ours = by_model["dense/finetuned"], by_model["run/compact"]
    assert [r["candidate"] for r in ours] == [choices.FP32, *choices.CANDIDATES]
    assert len(dense) == 1 + sum(not options.min_rank for options in choices.CANDIDATES.values())
    assert ours[0]["agreement"] == 1.0 and all(0.5 <= r["agreement"] for r in ours)  # fp32 against itself
    assert all("accuracy" in r["metrics"] and r["file_mib"] > 0 for r in ours)
    medians = next(m for m in timed.values() if set(m) == {r["candidate"] for r in ours})
    for row in ours:  # each candidate's median over fp32's, as the fake timing gave them
        assert row["median_ms_b8x128"] == medians[row["candidate"]]
        assert row["latency_vs_fp32"] == pytest.approx(medians[row["candidate"]] / medians[choices.FP32])
    assert len({row["latency_vs_fp32"] for row in ours}) == len(ours) and "vs fp32" in (tmp_path / "c.md").read_text()
    assert "$WORK_DIR" in result["command"] and str(tmp_path) not in result["command"]
    static = "static, min-max ranges"
    monkeypatch.setattr("sys.argv", ["int8_choices.py", compact, "--task", "mrpc", "--glue-dir", glue_dir,
                                     "--out", str(tmp_path / "s"), "--work-dir", str(tmp_path / "work"),
                                     "--candidates", static])
    choices.main()
    rows = json.loads((tmp_path / "s.json").read_text())["rows"]
    assert [r["candidate"] for r in rows] == [choices.FP32, static]
    assert rows[1]["settings"]["api"].endswith("(static)") and rows[1]["agreement"] >= 0.5
