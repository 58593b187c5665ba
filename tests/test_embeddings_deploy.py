"""benchmarks/embeddings_deploy.py: the teacher's and a student's graphs, timed on real sentence lengths and scored."""

import json
import os

import numpy as np
import pytest
import torch
from conftest import load_benchmark
from test_export_pooling import describe_pooling

pytest.importorskip("optimum.exporters.onnx", reason="pip install 'peft-rankdyna[onnx]'")
pytest.importorskip("onnxruntime", reason="pip install 'peft-rankdyna[onnx]'")

deploy = load_benchmark("embeddings_deploy")
embedding_texts = load_benchmark("embedding_texts")


def test_graphs_are_timed_per_batch_and_scored_against_the_teacher(tmp_path, glue_dir):
    from transformers import AutoModel

    from conftest import TINY_CONFIGS, tiny_tokenizer
    from peft_rankdyna.baselines import factor_model
    from rankdyna_exporters.export import export

    tokenizer = tiny_tokenizer(str(tmp_path / "tokenizer"))
    torch.manual_seed(0)
    dense = AutoModel.from_config(TINY_CONFIGS["bert"]())
    teacher = tmp_path / "teacher"
    dense.save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    factor_model(dense, 0.4).save_pretrained(tmp_path / "compact", tokenizer=tokenizer)
    for folder in (teacher, tmp_path / "compact"):
        describe_pooling(folder, "mean", True, dense.config.hidden_size)
    export(str(tmp_path / "compact"), str(tmp_path / "onnx"), int8=True)
    wiki = tmp_path / "wiki"
    wiki.mkdir()
    (wiki / "valid.txt").write_text(" A valid sentence of six words .\n")
    (wiki / "test.txt").write_text(" A test sentence of five words .\n")
    embedding_texts.write_texts(glue_dir, str(wiki), str(tmp_path / "texts"))
    out = str(tmp_path / "deploy")
    deploy.main(["--teacher", str(teacher), "--students", f"s04={tmp_path / 'onnx'}", "--texts",
                 str(tmp_path / "texts"), "--glue-dir", glue_dir, "--out", out, "--work-dir", str(tmp_path / "w"),
                 "--batch-sizes", "1", "4", "--sentences", "16", "--rounds", "2", "--threads", "1",
                 "--probe-samples", "200", "--max-seq-length", "32"])
    result = json.load(open(out + ".json", encoding="utf-8"))
    rows = {row["graph"]: row for row in result["rows"]}
    assert list(rows) == ["teacher fp32", "teacher int8", "s04 fp32", "s04 int8"]
    assert rows["teacher fp32"]["mean_cosine"] == pytest.approx(1.0, abs=1e-5)  # the graph is the teacher
    assert rows["teacher fp32"]["recall_at_10"] > 0.99
    assert rows["s04 fp32"]["mean_cosine"] < 0.9999  # the student is not the teacher
    for row in rows.values():
        assert set(row["sentences_per_s"]) == {"1", "4"}
        assert all(len(rates) == 2 and min(rates) > 0 for rates in row["sentences_per_s_rounds"].values())
        assert row["sentences_per_s"]["4"] == np.median(row["sentences_per_s_rounds"]["4"])
    assert (rows["s04 int8"]["file"], rows["teacher int8"]["file"]) == ("model_fused_int8.onnx", "model_int8.onnx")
    table = open(out + ".md", encoding="utf-8").read()
    assert "| s04 int8 |" in table and "--students s04=$S04" in result["command"] and str(tmp_path / "onnx") not in result["command"]
    assert os.path.getsize(out + ".png") > 0


def test_batches_are_padded_to_their_own_longest_sentence():
    from transformers import AutoTokenizer

    from conftest import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    found = deploy.batches(tokenizer, ["a b", "a b c d e f", "x"], 2, ["input_ids", "attention_mask"])
    assert [feed["input_ids"].shape for feed in found] == [(2, 8), (1, 3)]
