"""benchmarks/embeddings.py: a smoke run on a tiny sentence-embedding model with real MRPC text."""

import json

from conftest import load_benchmark

embeddings = load_benchmark("embeddings")


def test_smoke_run_scores_every_model_and_writes_the_table(tmp_path, tiny_glue_model, glue_dir):
    out = str(tmp_path / "embeddings")
    embeddings.main(["--model", tiny_glue_model, "--glue-dir", glue_dir, "--out", out, "--work-dir",
                     str(tmp_path / "work"), "--epochs", "1", "--max-train-samples", "64", "--max-seq-length", "32"])
    result = json.load(open(out + ".json", encoding="utf-8"))
    methods = [(row["method"], row["budget"]) for row in result["rows"]]
    assert methods == [("dense (teacher)", None), ("RankDyna", 0.5), ("RankDyna", 0.25), ("uniform SVD", 0.5),
                       ("uniform SVD", 0.25)]
    teacher = result["rows"][0]
    assert abs(teacher["mean_cosine"] - 1.0) < 1e-5 and 0.0 <= teacher["mrpc_auc"] <= 1.0
    assert len({row["train_mean_cosine"] for row in result["rows"][1:]}) == 4  # measured per model
    assert all(-1.0 <= row["train_mean_cosine"] < 1.0 - 1e-6 for row in result["rows"][1:])
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
