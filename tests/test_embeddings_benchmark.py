"""benchmarks/embeddings.py: a smoke run on a tiny sentence-embedding model with real MRPC text."""

import csv
import json
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import load_benchmark

embeddings = load_benchmark("embeddings")

MAX_LENGTH = 32


@pytest.fixture(autouse=True)
def _seeded():
    """Seeds torch before the fixtures draw their random models (autouse fixtures run first), so the scores the test
    recomputes are the same on every run."""
    torch.manual_seed(0)


def _mrpc_dev(glue_dir):
    """MRPC's dev pairs and labels, read from the TSV here (columns 3, 4 and 0), not through the library."""
    with open(os.path.join(glue_dir, "MRPC", "dev.tsv"), encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return [r[3] for r in rows], [r[4] for r in rows], torch.tensor([int(r[0]) for r in rows])


def _mean_pooled(model, tokenizer, texts):
    """Mean of the token states over the attention mask, all texts in one padded batch."""
    batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.no_grad():
        hidden = model.eval()(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)


def _auc(scores, labels):
    """ROC AUC as the Mann-Whitney statistic: the share of (positive, negative) pairs ranked right, ties half."""
    positive, negative = scores[labels == 1][:, None], scores[labels == 0][None, :]
    return float(((positive > negative).double() + 0.5 * (positive == negative).double()).mean())


def test_smoke_run_scores_every_model_and_writes_the_table(tmp_path, tiny_glue_model, glue_dir):
    out = str(tmp_path / "embeddings")
    embeddings.main(["--model", tiny_glue_model, "--glue-dir", glue_dir, "--out", out, "--work-dir",
                     str(tmp_path / "work"), "--epochs", "1", "--max-train-samples", "64",
                     "--max-seq-length", str(MAX_LENGTH)])
    result = json.load(open(out + ".json", encoding="utf-8"))
    methods = [(row["method"], row["budget"]) for row in result["rows"]]
    assert methods == [("dense (teacher)", None), ("RankDyna", 0.5), ("RankDyna", 0.25), ("uniform SVD", 0.5),
                       ("uniform SVD", 0.25)]
    teacher = result["rows"][0]
    assert result["pooling"]["mode"] == "mean"  # the tiny model declares no pooling: mean, as computed below
    # Every score recomputed here from the models on disk and MRPC's dev TSV: the teacher's pair AUC, and the
    # cosines to the teacher, pair AUC and fit on training sentences of the RankDyna model at 0.25.
    from transformers import AutoModel, AutoTokenizer

    from peft_rankdyna.compact import AutoCompactModel

    first, second, labels = _mrpc_dev(glue_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_glue_model)
    teacher_model = AutoModel.from_pretrained(tiny_glue_model)
    student = AutoCompactModel.from_pretrained(str(tmp_path / "work" / "rankdyna-0.25" / "compact"))
    teacher_pairs = [_mean_pooled(teacher_model, tokenizer, column) for column in (first, second)]
    student_pairs = [_mean_pooled(student, tokenizer, column) for column in (first, second)]
    teacher_auc = _auc(F.cosine_similarity(*teacher_pairs, dim=-1), labels)
    student_auc = _auc(F.cosine_similarity(*student_pairs, dim=-1), labels)
    assert abs(teacher_auc - 0.5) > 0.1  # 0.70: not what a constant similarity scores
    # 3e-4: up to ~10 of the 279 × 129 (positive, negative) pairs may swap order on rounding (none did here)
    assert teacher["mrpc_auc"] == pytest.approx(teacher_auc, abs=3e-4)
    assert abs(teacher["mean_cosine"] - 1.0) < 1e-5  # scored against itself
    row = next(r for r in result["rows"] if (r["method"], r["budget"]) == ("RankDyna", 0.25))
    cosines = F.cosine_similarity(torch.cat(student_pairs), torch.cat(teacher_pairs), dim=-1)
    # A tiny random encoder maps every sentence near one direction: the student sits 7e-5 below cosine 1 (the
    # teacher itself 1e-7), and its recomputed scores agree with the benchmark's to ~1e-7, hence the tolerances.
    assert float(cosines.mean()) < 1 - 2e-5  # distilled, not the teacher
    assert row["mean_cosine"] == pytest.approx(float(cosines.mean()), abs=2e-6)
    assert row["p5_cosine"] == pytest.approx(float(torch.quantile(cosines, 0.05)), abs=2e-6)
    assert row["mrpc_auc"] == pytest.approx(student_auc, abs=3e-4)
    fit_texts = embeddings.fit_sample(str(tmp_path / "work" / "mrpc-train-sentences.txt"))
    fit = F.cosine_similarity(_mean_pooled(student, tokenizer, fit_texts),
                              _mean_pooled(teacher_model, tokenizer, fit_texts))
    assert row["train_mean_cosine"] == pytest.approx(float(fit.mean()), abs=2e-6)
    assert len({row["train_mean_cosine"] for row in result["rows"][1:]}) == 4  # measured per model
    for row in result["rows"][1:]:
        assert row["target_params"] <= row["budget"] * teacher["target_params"] and row["train_texts"] == 64
        assert row["command"].startswith("rankdyna compress --model $MODEL") and tiny_glue_model not in row["command"]
    assert "| RankDyna | 0.25 |" in open(out + ".md", encoding="utf-8").read()


def test_the_fit_sample_is_drawn_from_the_training_sentences_seeded(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("\n".join(f"sentence {i}" for i in range(50)) + "\n")
    sample = embeddings.fit_sample(str(path), count=10)
    assert len(set(sample)) == 10 and set(sample) <= {f"sentence {i}" for i in range(50)}
    assert sample == embeddings.fit_sample(str(path), count=10) and sample != [f"sentence {i}" for i in range(10)]
