"""The compact causal LM's ONNX export with its KV cache: validated in prefill and decoding, loadable by Optimum's
ORTModelForCausalLM (generation with the cache gives PyTorch's tokens), the 8-bit-weight graph, and the refusals."""

import os

import pytest
import torch
from conftest import minilm_path
from test_decoders import tiny_decoder
from transformers import AutoTokenizer, LlamaConfig, MistralConfig

pytest.importorskip("optimum.exporters.onnx")
from optimum.onnxruntime import ORTModelForCausalLM  # noqa: E402

from peft_rankdyna.baselines import factor_model  # noqa: E402
from rankdyna_exporters.decoder import max_decoder_differences, validate_decoder  # noqa: E402
from rankdyna_exporters.export import export  # noqa: E402
from rankdyna_exporters.runtime import CPU, create_session  # noqa: E402
from rankdyna_exporters.validation import ExportValidationError  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_path())


def compact_folder(path, tokenizer, config_cls=LlamaConfig, seed=0, tie=True):
    """A tiny compact decoder (grouped-query attention: 4 query heads, 2 KV heads) saved with a real tokenizer."""
    model = factor_model(tiny_decoder(config_cls, seed, vocab_size=len(tokenizer), max_position_embeddings=128,
                                      tie_word_embeddings=tie), 0.5)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


def generated(model, tokenizer, prompts):
    tokenizer.padding_side = "left"  # generation continues each row at its end
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, return_token_type_ids=False)
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)


@pytest.mark.parametrize("config_cls", [LlamaConfig, MistralConfig])
def test_the_compact_causal_lm_exports_with_its_cache_and_generates_as_in_pytorch(tmp_path, tokenizer, config_cls):
    model = compact_folder(tmp_path / "compact", tokenizer, config_cls)
    report = export(str(tmp_path / "compact"), str(tmp_path / "onnx"), int8=True)
    assert report["task"] == "text-generation-with-past"
    assert set(report["variants"]) == {"portable", "int8"}
    assert max(report["variants"]["portable"]["max_abs_diff"].values()) <= 1e-3
    assert report["variants"]["int8"]["against_fp32"]["agreement"] >= 0.8
    prompts = ["the cat sat on the", "a dog"]
    expected = generated(model, tokenizer, prompts)
    onnx_model = ORTModelForCausalLM.from_pretrained(tmp_path / "onnx")
    assert onnx_model.use_cache
    assert torch.equal(generated(onnx_model, tokenizer, prompts), expected)
    int8_model = ORTModelForCausalLM.from_pretrained(tmp_path / "onnx", file_name="model_int8.onnx")
    assert generated(int8_model, tokenizer, prompts).shape == expected.shape


def test_validation_compares_both_phases_and_names_the_output_that_differs(tmp_path, tokenizer):
    model = compact_folder(tmp_path / "compact", tokenizer)
    export(str(tmp_path / "compact"), str(tmp_path / "onnx"))
    session = create_session(str(tmp_path / "onnx" / "model.onnx"), CPU)
    same = max_decoder_differences(session, model, tokenizer)
    assert {"logits", "present.0.key", "present.1.value"} <= set(same) and max(same.values()) < 1e-4
    with torch.no_grad():  # the last layer's values alone: only the cache (and the logits) can show it
        model.model.layers[1].self_attn.v_proj.up.weight.mul_(1.5)
    with pytest.raises(ExportValidationError, match=r"'present\.1\.value'|'logits'"):
        validate_decoder(session, model, tokenizer)
    assert max_decoder_differences(session, model, tokenizer)["present.1.value"] > 1e-3
    assert max_decoder_differences(session, model, tokenizer)["present.0.value"] < 1e-4


def test_an_int8_graph_that_predicts_other_tokens_leaves_no_export_behind(tmp_path, tokenizer, monkeypatch):
    import shutil

    from rankdyna_exporters import decoder

    # Untied: a tiny random model with tied embeddings tends to predict its input token, whatever its weights.
    compact_folder(tmp_path / "other", tokenizer, seed=1, tie=False)
    export(str(tmp_path / "other"), str(tmp_path / "other_onnx"))
    # A quantizer that writes another model's graph: the check must see the tokens differ.
    monkeypatch.setattr(decoder, "quantize_weights",
                        lambda source, target: shutil.copy(tmp_path / "other_onnx" / "model.onnx", target) and {})
    compact_folder(tmp_path / "compact", tokenizer)
    with pytest.raises(ExportValidationError, match="next token at only"):
        export(str(tmp_path / "compact"), str(tmp_path / "onnx"), int8=True)
    assert not os.path.exists(tmp_path / "onnx")


@pytest.mark.parametrize("options", [dict(fp16=True), dict(int8=True, int8_examples=[("a", None)])])
def test_encoder_only_export_options_are_refused_for_a_causal_lm(tmp_path, tokenizer, options):
    compact_folder(tmp_path / "compact", tokenizer)
    with pytest.raises(ValueError, match="belong to encoder exports"):
        export(str(tmp_path / "compact"), str(tmp_path / "onnx"), **options)


def test_rankdyna_bench_times_prefill_and_decoding_against_the_dense_graphs(tmp_path, tokenizer):
    import json

    from peft_rankdyna.jobs.cli import main

    dense = tiny_decoder(vocab_size=len(tokenizer), max_position_embeddings=128, tie_word_embeddings=True)
    dense.save_pretrained(tmp_path / "dense")
    tokenizer.save_pretrained(tmp_path / "dense")
    compact_folder(tmp_path / "compact", tokenizer)
    main(["export", str(tmp_path / "compact"), str(tmp_path / "onnx"), "--int8"])
    main(["bench", str(tmp_path / "onnx"), "--dense-model", str(tmp_path / "dense"), "--out", str(tmp_path / "lat"),
          "--seq-lens", "16", "--rounds", "1", "--runs-per-round", "2", "--warmup", "1", "--threads", "1",
          "--provider", "cpu", "--work-dir", str(tmp_path / "work")])
    rows = json.loads((tmp_path / "lat.json").read_text())["rows"]
    timed = {(r["variant"], r["phase"], r["batch_size"]) for r in rows}
    graphs = {"onnx dense", "onnx dense int8", "onnx fp32", "onnx int8"}
    assert timed == {(g, p, b) for g in graphs for p in ("prefill", "decode") for b in (1, 8)}
    for row in rows:
        assert row["runs"] == 2 and row["median_ms"] > 0
        assert row["tokens_per_s"] == pytest.approx(row["batch_size"] * (16 if row["phase"] == "prefill" else 1)
                                                    / row["median_ms"] * 1000)
        dense_name = "onnx dense int8" if row["variant"].endswith("int8") else "onnx dense"
        dense_ms = next(r["median_ms"] for r in rows if r["variant"] == dense_name and
                        (r["phase"], r["batch_size"]) == (row["phase"], row["batch_size"]))
        assert row["latency_vs_dense"] == pytest.approx(row["median_ms"] / dense_ms)
    assert "decode" in (tmp_path / "lat.md").read_text()
