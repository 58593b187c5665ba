"""Smoke test of benchmarks/lm.py on a tiny Llama: the training-free table, one fine-tuned cell, the summary."""

import json
import sys

import pytest
import torch
from conftest import load_benchmark, minilm_path


@pytest.fixture
def tiny_lm(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    text = "".join(f"a small cat number {i} sat on mat {i % 5} .\n" for i in range(200))
    (tmp_path / "train.txt").write_text(text)
    (tmp_path / "test.txt").write_text(text[::-1])
    return tmp_path


def test_lm_benchmark_free_run_and_summary(tiny_lm, monkeypatch):
    from peft_rankdyna.jobs.objectives.causal_lm import perplexity
    from peft_rankdyna.jobs.data.text import encode, read_text
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = load_benchmark("lm")
    common = ["--model", str(tiny_lm / "lm"), "--texts", str(tiny_lm / "train.txt"), "--test",
              str(tiny_lm / "test.txt"), "--budgets", "0.5", "--max-seq-length", "32", "--eval-tokens", "320",
              "--calibration-tokens", "256"]
    monkeypatch.setattr(sys, "argv", ["lm.py", "free", *common, "--out", str(tiny_lm / "free.jsonl")])
    lm.main()
    monkeypatch.setattr(sys, "argv", ["lm.py", "run", *common, "--out", str(tiny_lm / "runs.jsonl"), "--steps", "2",
                                      "--methods", "svdllm", "--work-dir", str(tiny_lm / "work")])
    lm.main()
    free = [json.loads(line) for line in (tiny_lm / "free.jsonl").read_text().splitlines()]
    assert [r["name"] for r in free] == ["dense", "svd-0.5", "asvd-0.5", "svdllm-0.5"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm / "lm")
    ids = encode(tokenizer, read_text(str(tiny_lm / "test.txt")))[:320]
    dense = perplexity(AutoModelForCausalLM.from_pretrained(tiny_lm / "lm"), ids, 32)
    assert free[0]["perplexity"] == pytest.approx(dense, rel=1e-5) and free[0]["eval_tokens"] == 320
    assert all(r["model_params"] < free[0]["model_params"] for r in free[1:])
    assert len({round(r["perplexity"], 6) for r in free[1:]}) == 3  # three different truncations
    runs = [json.loads(line) for line in (tiny_lm / "runs.jsonl").read_text().splitlines()]
    assert [(r["name"], r["steps"], r["stage"]) for r in runs] == [("svdllm-0.5-ft", 2, "fine-tuned")]
    monkeypatch.setattr(sys, "argv", ["lm.py", "summarize", "--runs", str(tiny_lm / "free.jsonl"),
                                      str(tiny_lm / "runs.jsonl"), "--out", str(tiny_lm / "lm")])
    lm.main()
    table = (tiny_lm / "lm.md").read_text()
    assert "| training-free | SVD-LLM | " in table and "| fine-tuned | SVD-LLM | " in table
    assert (tiny_lm / "lm.png").stat().st_size > 0
