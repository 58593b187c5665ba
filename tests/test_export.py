"""ONNX export: Optimum registration, fused attention, validation, fp16, runtime choice (CPU provider)."""

import json
import logging

import numpy as np
import pytest
import torch
from conftest import tiny_batch, tiny_compact_folder, tiny_model, tiny_tokenizer

pytest.importorskip("optimum.exporters.onnx", reason="pip install 'peft-rankdyna[onnx]'")
pytest.importorskip("onnxruntime", reason="pip install 'peft-rankdyna[onnx]'")

import peft_rankdyna  # noqa: E402,F401  (registers the compact type)
from peft_rankdyna import AutoCompactModel  # noqa: E402
from peft_rankdyna.compact import BiasOnly, LowRankLinear, truncate  # noqa: E402
from rankdyna_exporters import runtime  # noqa: E402
from rankdyna_exporters.export import FILE_NAMES, FP16, FUSED, FUSED_ORT, PORTABLE, export  # noqa: E402
from rankdyna_exporters.fusion import fuse_attention  # noqa: E402
from rankdyna_exporters.validation import ExportValidationError, tokenised_inputs, validate  # noqa: E402

FAMILIES = ["bert", "roberta", "electra", "distilbert", "mpnet"]


def _mixed_forms(model):
    """Layer 0's Q factored, K dense, V rank 0, so one attention mixes every truncated form."""
    attention = model.bert.encoder.layer[0].attention.self
    for name, rank in [("query", 5), ("key", 32), ("value", 0)]:
        linear = getattr(attention, name)
        U, s, Vt = torch.linalg.svd(linear.weight.detach(), full_matrices=False)
        keep = torch.arange(32) < rank
        setattr(attention, name, truncate(U, s, Vt, keep, linear.bias.detach()))
    assert isinstance(attention.query, LowRankLinear) and isinstance(attention.value, BiasOnly)
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_attention_computes_what_the_model_computes(family):
    from peft_rankdyna.baselines import factor_model

    model = factor_model(tiny_model(family), 0.4)
    fused, layers = fuse_attention(model)
    batch = tiny_batch()  # half the rows padded
    with torch.no_grad():
        torch.testing.assert_close(fused(**batch).logits, model(**batch).logits, atol=1e-5, rtol=1e-4)
    assert layers == 2


def test_fused_attention_mixes_factored_dense_and_rank_zero_projections():
    model = _mixed_forms(tiny_model())
    fused, _ = fuse_attention(model)
    widths = fused.bert.encoder.layer[0].attention.self.fused.widths
    assert widths == [5, 32, 0]
    with torch.no_grad():
        torch.testing.assert_close(fused(**tiny_batch()).logits, model(**tiny_batch()).logits, atol=1e-5, rtol=1e-4)


def test_fuse_attention_refuses_a_model_without_known_attention():
    with pytest.raises(ValueError, match="No self-attention"):
        fuse_attention(torch.nn.Sequential(torch.nn.Linear(4, 4)))


@pytest.mark.parametrize("family", FAMILIES)
def test_export_writes_validated_portable_and_fused_graphs(tmp_path, family):
    folder = tiny_compact_folder(str(tmp_path / "compact"), family)
    report = export(folder, tmp_path / "onnx")
    assert set(report["variants"]) == {PORTABLE, FUSED, FUSED_ORT}
    ops = {name: variant["ops"] for name, variant in report["variants"].items()}
    assert "MultiHeadAttention" not in ops[PORTABLE]
    assert ops[FUSED]["MultiHeadAttention"] == ops[FUSED_ORT]["MultiHeadAttention"] == 2
    for variant in report["variants"].values():
        assert max(variant["max_abs_diff"].values()) <= 1e-4
    saved = json.loads((tmp_path / "onnx" / "rankdyna_export.json").read_text())
    assert saved["variants"].keys() == report["variants"].keys()


def test_export_is_loaded_by_optimum_and_predicts_like_pytorch(tmp_path):
    from optimum.onnxruntime import ORTModelForSequenceClassification

    folder = tiny_compact_folder(str(tmp_path / "compact"), num_labels=3)
    export(folder, tmp_path / "onnx")
    model, tokenizer = AutoCompactModel.from_pretrained(folder), tiny_tokenizer(str(tmp_path / "tok"))
    inputs = tokenizer(["the cat is in a box", "a dog"], ["it is", "of the sea and sky"], padding=True,
                       return_tensors="pt")
    for file_name in (FILE_NAMES[PORTABLE], FILE_NAMES[FUSED]):
        ort_model = ORTModelForSequenceClassification.from_pretrained(tmp_path / "onnx", file_name=file_name)
        with torch.no_grad():
            torch.testing.assert_close(ort_model(**inputs).logits, model(**inputs).logits, atol=1e-4, rtol=0)


def test_optimum_main_export_exports_a_compact_folder(tmp_path):
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTModelForSequenceClassification

    folder = tiny_compact_folder(str(tmp_path / "compact"))
    main_export(folder, tmp_path / "onnx", task="text-classification")
    batch = tiny_batch()
    batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    with torch.no_grad():
        expected = AutoCompactModel.from_pretrained(folder)(**batch).logits
    actual = ORTModelForSequenceClassification.from_pretrained(tmp_path / "onnx")(**batch).logits
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


def test_transformers_auto_classes_load_a_compact_folder(tmp_path):
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification

    folder = tiny_compact_folder(str(tmp_path / "compact"))
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert model.rankdyna_ranks == AutoCompactModel.from_pretrained(folder).rankdyna_ranks
    encoder = AutoModel.from_pretrained(folder)
    assert type(encoder).__name__ == "BertModel"
    encoder.save_pretrained(tmp_path / "encoder")  # still the compact format, loadable with its ranks
    reloaded = AutoCompactModel.from_pretrained(tmp_path / "encoder")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**tiny_batch()).last_hidden_state, encoder(**tiny_batch()).last_hidden_state)
    with pytest.raises(ValueError, match="BertForTokenClassification"):
        AutoModelForTokenClassification.from_pretrained(folder)


@pytest.mark.parametrize("head", ["feature-extraction", "token-classification", "regression"])
def test_export_other_tasks(tmp_path, head):
    from transformers import BertModel

    from conftest import TINY_CONFIGS

    config = TINY_CONFIGS["bert"]()
    if head == "feature-extraction":
        model = BertModel(config).eval()
    elif head == "token-classification":
        from transformers import BertForTokenClassification

        model = BertForTokenClassification(config).eval()
    else:
        model = tiny_model(num_labels=1)
    folder = tiny_compact_folder(str(tmp_path / "compact"), model=model)
    report = export(folder, tmp_path / "onnx", fp16=head == "regression")
    expected_task = {"regression": "text-classification"}.get(head, head)
    assert report["task"] == expected_task
    if head == "regression":
        assert report["variants"][FP16]["against_fp32"]["agreement"] is None


def test_validation_names_the_output_and_the_difference(tmp_path):
    folder = tiny_compact_folder(str(tmp_path / "compact"))
    export(folder, tmp_path / "onnx")
    session = runtime.create_session(str(tmp_path / "onnx" / FILE_NAMES[PORTABLE]))
    other = AutoCompactModel.from_pretrained(folder)
    with torch.no_grad():
        other.classifier.bias += 0.01
    with pytest.raises(ExportValidationError, match=r"output 'logits' differs from PyTorch by up to 0\.01"):
        validate(session, other, tiny_tokenizer(str(tmp_path / "tok")), 1e-4, "portable")


def test_tokenised_inputs_are_real_text_padded_to_two_lengths(tmp_path):
    tokenizer = tiny_tokenizer(str(tmp_path / "tok"))
    feeds = tokenised_inputs(tokenizer, 8, 128, ["input_ids", "attention_mask"])
    assert feeds["input_ids"].shape == (8, 128) and feeds["input_ids"].dtype == np.int64
    lengths = feeds["attention_mask"].sum(1)
    assert lengths.min() < 128 and len(set(lengths.tolist())) > 1  # padded, and not all alike
    short = tokenised_inputs(tokenizer, 1, 16, ["input_ids"])["input_ids"]
    assert short.shape == (1, 16)


def test_fp16_graph_runs_on_cpu_and_agrees_with_fp32(tmp_path):
    import onnx

    folder = tiny_compact_folder(str(tmp_path / "compact"))
    report = export(folder, tmp_path / "onnx", fp16=True)
    check = report["variants"][FP16]["against_fp32"]
    assert check["agreement"] >= 0.995 and check["max_abs_diff"] < 0.05
    graph = onnx.load(str(tmp_path / "onnx" / FILE_NAMES[FP16])).graph
    assert {init.data_type for init in graph.initializer} >= {onnx.TensorProto.FLOAT16}
    assert all(value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 for value in [*graph.input, *graph.output])
    layer_norms = [n for n in graph.node if "LayerNormalization" in n.op_type]
    assert layer_norms  # kept in fp32: their float inputs come through Casts from fp16
    examples = [("the cat", "a dog"), ("is it", None)] * 8
    report = export(folder, tmp_path / "onnx2", fp16=True, fp16_examples=examples)
    assert report["variants"][FP16]["against_fp32"]["examples"] == 16


def test_cli_export_prints_the_graphs(tmp_path, capsys):
    from peft_rankdyna.jobs.cli import main

    folder = tiny_compact_folder(str(tmp_path / "compact"), "distilbert")
    assert main(["export", folder, str(tmp_path / "onnx")]) == 0
    out = capsys.readouterr().out
    assert "model_fused.onnx" in out and "model.onnx" in out
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "o")]) == 2


def test_runtime_picks_cpu_without_cuda_and_says_so(caplog):
    if runtime.cuda_available():
        pytest.skip("a CUDA device is present")
    with caplog.at_level(logging.INFO, logger="rankdyna_exporters"):
        assert runtime.choose_provider() == runtime.CPU
    assert "CPUExecutionProvider" in caplog.text and "no CUDA" in caplog.text
    with pytest.raises(ValueError, match="CUDA provider was asked for"):
        runtime.choose_provider("cuda")


def test_runtime_warns_when_both_onnxruntime_distributions_are_installed(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "onnxruntime_distributions", lambda: ["onnxruntime 1.32.0", "onnxruntime-gpu 1.32.0"])
    with caplog.at_level(logging.WARNING, logger="rankdyna_exporters"):
        runtime.warn_if_both_installed()
    assert "overwrite each other" in caplog.text


def test_a_session_that_fell_back_from_cuda_to_the_cpu_is_an_error(monkeypatch, tmp_path):
    import onnxruntime

    class FellBack:  # what onnxruntime returns when the CUDA provider's libraries fail to load
        def __init__(self, path, options, providers):
            self.asked = providers

        def get_providers(self):
            return [runtime.CPU]

    monkeypatch.setattr(onnxruntime, "InferenceSession", FellBack)
    with pytest.raises(RuntimeError, match="could not start CUDAExecutionProvider .* fell back to CPUExecutionProvider"):
        runtime.create_session(str(tmp_path / "model.onnx"), runtime.CUDA)
    assert runtime.create_session(str(tmp_path / "model.onnx"), runtime.CPU).asked == [runtime.CPU]


@pytest.mark.real_model
def test_real_minilm_compact_exports_with_six_fused_attentions(tmp_path):
    from conftest import minilm_path
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from peft_rankdyna.baselines import factor_model

    path = minilm_path()
    compact = factor_model(AutoModelForSequenceClassification.from_pretrained(path, num_labels=2), 0.5)
    report = export(compact.eval(), tmp_path / "onnx", tokenizer=AutoTokenizer.from_pretrained(path))
    assert report["variants"][FUSED]["ops"]["MultiHeadAttention"] == 6
    assert max(report["variants"][FUSED]["max_abs_diff"].values()) <= 1e-4


@pytest.mark.gpu
def test_fp16_graph_on_cuda(tmp_path):
    if not runtime.cuda_available():
        pytest.skip("needs onnxruntime-gpu and a CUDA device")
    folder = tiny_compact_folder(str(tmp_path / "compact"))
    report = export(folder, tmp_path / "onnx", fp16=True)
    check = report["variants"][FP16]["against_fp32"]
    assert check["provider"] == runtime.CUDA and check["agreement"] >= 0.995


def test_missing_onnx_extra_is_one_clear_import_error(monkeypatch):
    import importlib.util

    import rankdyna_exporters

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ImportError, match=r"needs onnxruntime: pip install 'peft-rankdyna\[onnx\]'"):
        rankdyna_exporters.require_onnx_extras()
