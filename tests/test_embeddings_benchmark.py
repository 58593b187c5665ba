"""benchmarks/embeddings.py and embedding_texts.py: the texts kept apart, and a smoke run on a tiny model with real
GLUE text whose scores are recomputed here."""

import csv
import json
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import load_benchmark
from transformers import TrainerCallback

embeddings = load_benchmark("embeddings")
embedding_texts = load_benchmark("embedding_texts")

MAX_LENGTH = 32
WIKI = (" = Heading = \n\n The river is 1 @,@ 200 km long . It flows ( mostly ) east . Short piece .\n"
        " The town 's mayor did n't like the plan at all .\n")


@pytest.fixture(autouse=True)
def _seeded():
    """Seeds torch before the fixtures draw their random models (autouse fixtures run first)."""
    torch.manual_seed(0)


def test_wikitext_is_split_into_readable_sentences(tmp_path):
    (tmp_path / "w.txt").write_text(WIKI)
    assert embedding_texts.wiki_sentences(str(tmp_path / "w.txt")) == [
        "The river is 1,200 km long.", "It flows (mostly) east.",  # "Short piece ." is left out
        "The town's mayor didn't like the plan at all."]


def test_the_training_text_holds_no_pool_or_validation_sentence(tmp_path, glue_dir):
    wiki = tmp_path / "wiki"
    wiki.mkdir()
    (wiki / "valid.txt").write_text(WIKI)
    (wiki / "test.txt").write_text(" The town 's mayor did n't like the plan at all .\n A test sentence of five words .\n")
    counts = embedding_texts.write_texts(glue_dir, str(wiki), str(tmp_path / "texts"))
    files = {name: (tmp_path / "texts" / f"{name}.txt").read_text().splitlines() for name in counts}
    assert {name: len(lines) for name, lines in files.items()} == counts
    keys = {name: {embedding_texts.key(text) for text in lines} for name, lines in files.items()}
    assert len(keys["train"]) == counts["train"]  # de-duplicated
    assert not keys["train"] & keys["pool"] and not keys["train"] & keys["validation"]
    assert "the town's mayor didn't like the plan at all." in keys["pool"]  # in both wiki files: pool only
    assert "the river is 1,200 km long." in keys["train"] | keys["validation"]
    first = files["train"][: len(files["train"]) // 10]  # shuffled: the sources are mixed from the first lines on
    sst2_share = sum(text.lower() == text for text in first) / len(first)  # SST-2 is lower-cased; CoLA/MRPC are not
    assert 0.3 < sst2_share < 0.95
    with open(os.path.join(glue_dir, "CoLA", "dev.tsv"), encoding="utf-8") as handle:
        cola_dev = [row[3] for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)]
    assert {embedding_texts.key(text) for text in cola_dev} <= keys["pool"]


def _pooled(model, tokenizer, texts):
    """Mean of the token states over the attention mask (the tiny model declares no pooling), in batches."""
    chunks = []
    for start in range(0, len(texts), 256):
        batch = tokenizer(texts[start:start + 256], padding=True, truncation=True, max_length=MAX_LENGTH,
                          return_tensors="pt")
        with torch.no_grad():
            hidden = model.eval()(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        chunks.append((hidden * mask).sum(1) / mask.sum(1))
    return torch.cat(chunks)


def _recall(student, teacher, k=10):
    """Overlap of top-k neighbour sets, written out with argsort (self excluded by a -2 on the diagonal)."""
    def top(queries, documents):
        similarity = F.normalize(queries, dim=-1) @ F.normalize(documents, dim=-1).T
        similarity.fill_diagonal_(-2)
        return similarity.argsort(dim=-1, descending=True)[:, :k].tolist()

    expected = top(teacher, teacher)
    return [sum(len(set(a) & set(b)) for a, b in zip(top(q, d), expected)) / (k * len(expected))
            for q, d in ((student, student), (student, teacher))]


def _texts(tmp_path, glue_dir):
    """The benchmark's text folder, written from real GLUE text and a tiny WikiText."""
    wiki = tmp_path / "wiki"
    wiki.mkdir()
    (wiki / "valid.txt").write_text(WIKI)
    (wiki / "test.txt").write_text(" A test sentence of five words .\n")
    texts = str(tmp_path / "texts")
    embedding_texts.write_texts(glue_dir, str(wiki), texts)
    return texts


def test_smoke_run_scores_every_model_and_writes_the_table(tmp_path, tiny_glue_model, glue_dir):
    texts = _texts(tmp_path, glue_dir)
    out = str(tmp_path / "embeddings")
    embeddings.main(["--model", tiny_glue_model, "--texts", texts, "--glue-dir", glue_dir, "--out", out,
                     "--work-dir", str(tmp_path / "work"), "--max-train-samples", "64", "--epochs", "1",
                     "--max-seq-length", str(MAX_LENGTH), "--eval-steps", "4", "--probe-samples", "300",
                     "--runs", "rankdyna:0.25", "svd:0.5", "--setting", "cos=--distill-loss cosine --tinit 0"])
    result = json.load(open(out + ".json", encoding="utf-8"))
    assert [(r["setting"], r["method"], r["budget"]) for r in result["rows"]] == [
        ("—", "dense (teacher)", None), ("cos", "RankDyna", 0.25), ("cos", "uniform SVD", 0.5)]
    teacher_row, row = result["rows"][0], result["rows"][1]
    assert (teacher_row["mean_cosine"], teacher_row["recall_at_10"], teacher_row["mixed_recall_at_10"]) == \
        pytest.approx((1.0, 1.0, 1.0), abs=1e-5)
    from transformers import AutoModel, AutoTokenizer

    from peft_rankdyna.compact import AutoCompactModel

    pool = (tmp_path / "texts" / "pool.txt").read_text().splitlines()
    tokenizer = AutoTokenizer.from_pretrained(tiny_glue_model)
    student = _pooled(AutoCompactModel.from_pretrained(str(tmp_path / "work" / "cos" / "rankdyna-0.25" / "compact")),
                      tokenizer, pool)
    teacher = _pooled(AutoModel.from_pretrained(tiny_glue_model), tokenizer, pool)
    cosines = F.cosine_similarity(student, teacher, dim=-1)
    assert float(cosines.mean()) < 1 - 2e-5  # distilled, not the teacher
    assert row["mean_cosine"] == pytest.approx(float(cosines.mean()), abs=2e-6)
    assert [row["recall_at_10"], row["mixed_recall_at_10"]] == pytest.approx(_recall(student, teacher), abs=2e-3)
    assert 0.4 <= row["sst2_probe"] <= 1 and -1 <= row["cola_probe"] <= 1 and 0 <= row["mrpc_auc"] <= 1
    assert "--distill-loss cosine --tinit 0" in row["command"] and row["flags"] == "--distill-loss cosine --tinit 0"
    assert [p["step"] for p in row["curve"]] == [0, 4] and row["train_texts"] == 64
    if row["sentence_transformers_max_diff"] is not None:  # sentence-transformers installed: it encodes as we do
        assert row["sentence_transformers_max_diff"] < 1e-4
    table = open(out + ".md", encoding="utf-8").read()
    assert "| cos | RankDyna | 0.25 |" in table and "`cos` = `--distill-loss cosine --tinit 0`" in table
    assert os.path.getsize(out + ".png") > 0
    arguments = ["--model", tiny_glue_model, "--texts", texts, "--glue-dir", glue_dir, "--out", out + "-validation",
                 "--work-dir", str(tmp_path / "work"), "--max-train-samples", "64", "--epochs", "1", "--max-seq-length",
                 str(MAX_LENGTH), "--eval-steps", "4", "--runs", "rankdyna:0.25", "--setting",
                 "cos=--distill-loss cosine --tinit 0", "--validation-only"]
    embeddings.main(arguments)  # the run is reused: its folder holds this command's results
    quick = json.load(open(out + "-validation.json", encoding="utf-8"))
    (only,) = quick["rows"]
    results = json.load(open(tmp_path / "work" / "cos" / "rankdyna-0.25" / "results.json", encoding="utf-8"))
    assert only["validation_mean_cosine"] == results["metrics"]["mean_cosine"] and "folder" not in only
    assert "| cos | RankDyna | 0.25 |" in open(out + "-validation.md", encoding="utf-8").read()
    # Other flags that resolve to the same settings reuse the folder; the row names the command that ran.
    same = [*arguments[:-2], "cos=--distill-loss cosine --tinit 0 --token-loss-weight 0", "--validation-only"]
    embeddings.main(same)
    (again,) = json.load(open(out + "-validation.json", encoding="utf-8"))["rows"]
    assert again["validation_mean_cosine"] == only["validation_mean_cosine"]
    assert "--token-loss-weight" not in again["command"]
    with pytest.raises(SystemExit, match=r"learning_rate: 5e-05 then, 0.0001 now"):  # same folder, another lr
        embeddings.main([*arguments, "--lr", "1e-4"])
    # A record from before a default changed, or before a setting existed, is not today's run either.
    record_path = tmp_path / "work" / "cos" / "rankdyna-0.25" / "results.json"
    record = json.loads(record_path.read_text())
    record["settings"]["init_basis"] = "svd"
    del record["settings"]["final_lr_restart"]
    record_path.write_text(json.dumps(record))
    with pytest.raises(SystemExit, match=r"init_basis: 'svd' then, 'whitened' now"):
        embeddings.main(arguments)
    record["settings"]["init_basis"] = "whitened"
    record_path.write_text(json.dumps(record))
    embeddings.main(arguments)  # the missing setting had its default, as today's command
    with pytest.raises(SystemExit, match=r"final_lr_restart: False then, True now"):
        embeddings.main([*arguments[:-2], "cos=--distill-loss cosine --tinit 0 --final-lr-restart",
                         "--validation-only"])


def test_the_fit_sample_is_drawn_from_the_training_sentences_seeded(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("\n".join(f"sentence {i}" for i in range(50)) + "\n")
    sample = embeddings.fit_sample(str(path), count=10)
    assert len(set(sample)) == 10 and set(sample) <= {f"sentence {i}" for i in range(50)}
    assert sample == embeddings.fit_sample(str(path), count=10) and sample != [f"sentence {i}" for i in range(10)]


def test_a_setting_is_a_name_and_compress_flags():
    assert embeddings.parse_setting("tok=--token-loss-weight 2 --tinit 0") == ("tok", ["--token-loss-weight", "2",
                                                                                      "--tinit", "0"])
    assert embeddings.parse_setting("default") == ("default", [])
    with pytest.raises(Exception, match="plain NAME"):
        embeddings.parse_setting("a b=--tinit 0")


class _KillAtStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise KeyboardInterrupt  # the run dies after its step-2 checkpoint


def test_a_run_killed_after_a_checkpoint_continues_from_it(tmp_path, tiny_glue_model, glue_dir, capsys):
    from peft_rankdyna.jobs import compress
    from peft_rankdyna.jobs.cli import build_parser, compress_settings

    arguments = ["--model", tiny_glue_model, "--texts", _texts(tmp_path, glue_dir), "--glue-dir", glue_dir,
                 "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work"), "--max-train-samples", "96",
                 "--epochs", "1", "--max-seq-length", str(MAX_LENGTH), "--eval-steps", "4", "--save-steps", "2",
                 "--runs", "rankdyna:0.5", "--validation-only"]
    command = embeddings.distill_command(embeddings.build_parser().parse_args(arguments), ("default", []),
                                         "rankdyna", 0.5)
    with pytest.raises(KeyboardInterrupt):
        compress(compress_settings(build_parser().parse_args(command[1:])), callbacks=[_KillAtStep()])
    capsys.readouterr()
    embeddings.main(arguments)
    assert "running default rankdyna 0.5 from checkpoint-2 ..." in capsys.readouterr().out
    results = json.load(open(tmp_path / "work" / "default" / "rankdyna-0.5" / "results.json", encoding="utf-8"))
    assert results["resumed_from_step"] == 2 and results["train_steps"] == 6
    assert [p["step"] for p in results["curve"]] == [0, 4, 6]
