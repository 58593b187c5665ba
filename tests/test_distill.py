"""Embedding distillation: pooling as the model folder says, the student learns the teacher, the result is an
embedding model with the teacher's pooling."""

import json

import pytest
import torch

from peft_rankdyna.jobs.cli import main
from peft_rankdyna.compact import AutoCompactModel
from peft_rankdyna.jobs.data.files import read_texts
from peft_rankdyna.jobs.objectives.embedding_distillation import embed
from peft_rankdyna.pooling import Pooling, pool, read_pooling

TEXTS = [f"the {a} {b} was {c} today" for a in ("cat", "dog", "man", "film") for b in ("in", "on")
         for c in ("good", "bad", "fine", "late", "here")]


def _sentence_transformers_folder(folder, mode="cls", normalize=True):
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": mode == "cls",
         "pooling_mode_mean_tokens": mode == "mean", "pooling_mode_max_tokens": mode == "max"}))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))


def test_pooling_is_read_from_the_folder(tmp_path):
    assert read_pooling(str(tmp_path)) == Pooling("mean", False)  # a plain transformers folder
    _sentence_transformers_folder(tmp_path, "max", normalize=True)
    assert read_pooling(str(tmp_path)) == Pooling("max", True)


def test_pooling_leaves_padding_out():
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(pool(hidden, mask, Pooling("mean")), torch.tensor([[2.0, 2.0]]))
    torch.testing.assert_close(pool(hidden, mask, Pooling("max")), torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(pool(hidden, mask, Pooling("cls", normalize=True)), torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(pool(hidden, mask, Pooling("mean", normalize=True)).norm(dim=-1), torch.tensor([1.0]))


def test_texts_come_from_lines_or_a_column(tmp_path):
    (tmp_path / "t.txt").write_text("first\n\nsecond\n")
    assert read_texts(str(tmp_path / "t.txt")) == ["first", "second"]
    (tmp_path / "t.tsv").write_text("sentence\tlabel\nx y\t1\n\t0\n")
    assert read_texts(str(tmp_path / "t.tsv")) == ["x y"]
    with pytest.raises(ValueError, match="no text column 'body'"):
        read_texts(str(tmp_path / "t.tsv"), ["body"])


def test_every_named_text_column_gives_its_texts(tmp_path):
    (tmp_path / "t.csv").write_text("a,b,label\nfirst a,first b,1\nsecond a,,0\n")
    assert read_texts(str(tmp_path / "t.csv"), ["a", "b"]) == ["first a", "second a", "first b"]
    (tmp_path / "t.jsonl").write_text('{"a": "x", "b": "y"}\n{"a": "z"}\n')
    with pytest.raises(ValueError, match=r"t.jsonl:2: no 'b' key"):
        read_texts(str(tmp_path / "t.jsonl"), ["a", "b"])
    with pytest.raises(ValueError, match="has no columns"):
        read_texts(str(tmp_path / "t.txt"), ["a"])


def save_tiny_encoder(folder, initializer_range=0.02):
    """A tiny BERT encoder without dropout (the teacher's embeddings are computed without it) and a real vocabulary.

    With BERT's initializer range its layers barely change the embeddings; a wider one makes them matter.
    """
    from transformers import AutoModel, AutoTokenizer

    from conftest import TINY_CONFIGS, minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = TINY_CONFIGS["bert"]()
    config.vocab_size, config.max_position_embeddings = tokenizer.vocab_size, 128
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    config.initializer_range = initializer_range
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_encoder(tmp_path):
    return save_tiny_encoder(tmp_path / "encoder")


@pytest.mark.parametrize("method, mode, normalize", [("rankdyna", "cls", True), ("svd", "mean", False)])
def test_distillation_trains_the_student_towards_the_teacher(tmp_path, tiny_encoder, method, mode, normalize):
    from transformers import AutoModel, AutoTokenizer

    from peft_rankdyna.baselines import factor_model

    _sentence_transformers_folder(tiny_encoder, mode, normalize)
    pooling = Pooling(mode, normalize)
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS * 3))
    (tmp_path / "held.txt").write_text("\n".join(t.replace("today", "now") for t in TEXTS[:20]))
    out = tmp_path / method
    assert main(["compress", "--model", str(tiny_encoder), "--objective", "embedding-distillation", "--texts",
                 str(tmp_path / "texts.txt"), "--validation-texts", str(tmp_path / "held.txt"), "--method", method,
                 "--budget", "0.25", "--output", str(out), "--max-steps", "16", "--lr", "1e-4", "--tinit", "3",
                 "--tfinal", "3", "--delta-t", "2", "--max-seq-length", "16", "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["pooling"] == {"mode": mode, "normalize": normalize} and results["validation_texts"] == 20
    assert results["target_params_after"] <= 0.25 * results["target_params_before"]
    compact_dir = out / "compact"
    assert read_pooling(str(compact_dir)) == pooling  # the student is saved as an embedding model
    tokenizer = AutoTokenizer.from_pretrained(compact_dir)
    held = (tmp_path / "held.txt").read_text().splitlines()
    teacher = embed(AutoModel.from_pretrained(tiny_encoder), tokenizer, held, pooling, 16)
    student = embed(AutoCompactModel.from_pretrained(compact_dir), tokenizer, held, pooling, 16)
    cosine = torch.nn.functional.cosine_similarity(student, teacher).mean().item()
    assert cosine == pytest.approx(results["metrics"]["mean_cosine"], abs=1e-4)  # the merged model is the one scored
    sentence_transformers = pytest.importorskip("sentence_transformers")
    loaded = sentence_transformers.SentenceTransformer(str(compact_dir), device="cpu")  # after `import peft_rankdyna`
    torch.testing.assert_close(loaded.encode(held, convert_to_tensor=True), student, atol=1e-5, rtol=1e-4)
    if method == "svd":  # the same truncation before training: training moved it towards the teacher
        untrained = embed(factor_model(AutoModel.from_pretrained(tiny_encoder), 0.25), tokenizer, held, pooling, 16)
        assert (student - teacher).pow(2).sum(-1).mean() < 0.5 * (untrained - teacher).pow(2).sum(-1).mean()


def test_distillation_needs_texts_and_a_budget(tmp_path, tiny_glue_model, capsys):
    assert main(["compress", "--model", tiny_glue_model, "--objective", "embedding-distillation", "--output",
                 str(tmp_path)]) == 2
    assert "give --texts FILE" in capsys.readouterr().err
    (tmp_path / "t.txt").write_text("a\nb\n")
    assert main(["compress", "--model", tiny_glue_model, "--objective", "embedding-distillation", "--texts",
                 str(tmp_path / "t.txt"), "--dense", "--output", str(tmp_path / "o")]) == 2
    assert "compresses with --method rankdyna or svd or asvd or svdllm and a --budget" in capsys.readouterr().err


def test_the_embedding_losses_are_what_they_say():
    from peft_rankdyna.jobs.objectives.embedding_distillation import embedding_loss

    student, teacher = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    mse, cosine = torch.tensor(0.75), torch.tensor(0.5)  # squares (1 + 1 + 0 + 1)/4; 1 − cos: (1 + 0)/2
    torch.testing.assert_close(embedding_loss(student, teacher, "mse"), mse)
    torch.testing.assert_close(embedding_loss(student, teacher, "cosine"), cosine)
    torch.testing.assert_close(embedding_loss(student, teacher, "mse+cosine"), mse + cosine)
    with pytest.raises(ValueError, match="Unknown distillation loss 'l1'"):
        embedding_loss(student, teacher, "l1")


def test_the_token_loss_leaves_padding_out():
    from peft_rankdyna.jobs.objectives.embedding_distillation import token_loss

    student = torch.tensor([[[1.0, 1.0], [5.0, 5.0]]])
    teacher = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    torch.testing.assert_close(token_loss(student, teacher, torch.tensor([[1, 0]])), torch.tensor(0.5))
    torch.testing.assert_close(token_loss(student, teacher, torch.tensor([[1, 1]])), torch.tensor(51 / 4))


def test_the_index_measures_count_shared_neighbours():
    from peft_rankdyna.jobs.embedding_metrics import index_report, nearest, overlap

    # Points on an arc, each gap wider than the one before: each point's nearest neighbour is the one before it.
    angles = torch.cumsum(torch.arange(12) * 0.01, 0)
    teacher = torch.stack([angles.cos(), angles.sin()], dim=-1)
    assert nearest(teacher, teacher, 1)[:, 0].tolist() == [1] + list(range(11))
    assert index_report(teacher, teacher, k=3) == {"recall_at_3": 1.0, "mixed_recall_at_3": 1.0}
    assert overlap(torch.tensor([[1, 2], [0, 5]]), torch.tensor([[2, 3], [5, 0]])) == 0.75
    shuffled = teacher[torch.randperm(12, generator=torch.Generator().manual_seed(0))]
    report = index_report(shuffled, teacher, k=3)  # every text moved to another's place: other neighbours
    assert report["recall_at_3"] < 0.5 and report["mixed_recall_at_3"] < 0.5
    with pytest.raises(ValueError, match="k must be in"):
        nearest(teacher, teacher, 12)


def test_the_distillation_options_are_checked(tmp_path):
    from peft_rankdyna.jobs.settings import CompressSettings

    def settings(task=None, **kwargs):
        return CompressSettings(model=str(tmp_path), task=task, output_dir=str(tmp_path / "o"), **kwargs)

    with pytest.raises(ValueError, match="embedding-distillation objective's loss"):
        settings(task="mrpc", token_loss_weight=1.0)
    with pytest.raises(ValueError, match="finite number ≥ 0"):
        settings(objective="embedding-distillation", token_loss_weight=float("nan"))
    with pytest.raises(ValueError, match="Unknown distill_loss"):
        settings(objective="embedding-distillation", distill_loss="l1")
    with pytest.raises(ValueError, match="eval_steps must be"):
        settings(objective="embedding-distillation", eval_steps=0)


def test_the_cli_offers_the_losses_the_settings_take():
    from peft_rankdyna.jobs.cli import build_parser
    from peft_rankdyna.jobs.settings import DISTILL_LOSSES

    compress = build_parser()._subparsers._group_actions[0].choices["compress"]
    action = next(a for a in compress._actions if a.dest == "distill_loss")
    assert tuple(action.choices) == DISTILL_LOSSES


def test_the_token_loss_is_added_to_the_embedding_loss(tiny_encoder):
    from transformers import AutoModel, AutoTokenizer

    from peft_rankdyna.baselines import factor_model
    from peft_rankdyna.jobs.objectives.embedding_distillation import SentenceEncoder, embedding_loss, token_loss

    tokenizer, pooling = AutoTokenizer.from_pretrained(tiny_encoder), Pooling("mean", True)
    teacher = AutoModel.from_pretrained(tiny_encoder).eval()
    student = factor_model(AutoModel.from_pretrained(tiny_encoder), 0.25).eval()
    batch = tokenizer(TEXTS[:4] + ["a much longer text than the others here"], padding=True, return_tensors="pt")
    targets = embed(teacher, tokenizer, TEXTS[:4] + ["a much longer text than the others here"], pooling)
    with pytest.raises(ValueError, match="needs the teacher model"):
        SentenceEncoder(student, pooling, "cosine", None, 2.0)
    out = SentenceEncoder(student, pooling, "cosine", teacher, 2.0)(**batch, teacher=targets)
    hidden = student(**batch).last_hidden_state
    expected = embedding_loss(pool(hidden, batch["attention_mask"], pooling), targets, "cosine") + 2.0 * token_loss(
        hidden, teacher(**batch).last_hidden_state, batch["attention_mask"])
    torch.testing.assert_close(out.loss, expected)
    assert not any(p is q for p in SentenceEncoder(student, pooling, "mse", teacher, 1.0).parameters()
                   for q in teacher.parameters())  # the teacher is not trained


def test_a_run_scored_while_it_trains_has_its_curve(tmp_path, monkeypatch):
    from peft_rankdyna.jobs.objectives import embedding_distillation

    losses = []
    for name in ("embedding_loss", "token_loss"):  # record which losses training computes
        original = getattr(embedding_distillation, name)
        monkeypatch.setattr(embedding_distillation, name,
                            lambda *a, _f=original, _n=name, **k: losses.append((_n, a[-1] if _n == "embedding_loss"
                                                                                  else None)) or _f(*a, **k))
    tiny_encoder = save_tiny_encoder(tmp_path / "encoder", initializer_range=0.2)
    _sentence_transformers_folder(tiny_encoder, "mean", True)
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS * 2))
    (tmp_path / "held.txt").write_text("\n".join(t.replace("today", "now") for t in TEXTS[:20]))
    out = tmp_path / "run"
    assert main(["compress", "--model", str(tiny_encoder), "--objective", "embedding-distillation", "--texts",
                 str(tmp_path / "texts.txt"), "--validation-texts", str(tmp_path / "held.txt"), "--budget", "0.3",
                 "--output", str(out), "--max-steps", "8", "--tinit", "0", "--tfinal", "3", "--delta-t", "2",
                 "--max-seq-length", "16", "--eval-steps", "4", "--distill-loss", "mse+cosine",
                 "--token-loss-weight", "1", "--init-basis", "svd", "--no-progress"]) == 0  # the SVD start's path
    results = json.loads((out / "results.json").read_text())
    assert (results["distill_loss"], results["token_loss_weight"]) == ("mse+cosine", 1.0)
    assert results["settings"]["init_basis"] == "svd"
    assert set(losses) == {("embedding_loss", "mse+cosine"), ("token_loss", None)}  # both reached the training
    assert [(p["round"], p["step"]) for p in results["curve"]] == [(0, 0), (0, 4), (0, 8)]
    assert results["curve"][0]["mean_cosine"] == pytest.approx(1.0, abs=1e-5)  # full rank before the first step
    last = results["curve"][-1]  # the model at the last step, before the merge: the one saved
    assert last["mean_cosine"] < 0.99 and last["mean_cosine"] == pytest.approx(results["metrics"]["mean_cosine"], abs=1e-4)
    assert {"recall_at_10", "mixed_recall_at_10", "p5_cosine"} <= set(results["metrics"])
    pytest.importorskip("matplotlib")
    assert (out / "curve.png").stat().st_size > 0


def test_embeddings_come_back_in_the_order_of_the_texts(tiny_encoder):
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(tiny_encoder), AutoModel.from_pretrained(tiny_encoder)
    texts = ["a much longer sentence than all of the others in this list", "short", "a medium one here", "x y"]
    together = embed(model, tokenizer, texts, Pooling("mean", True), batch_size=2)  # batched shortest first
    one_by_one = torch.cat([embed(model, tokenizer, [text], Pooling("mean", True)) for text in texts])
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=1e-4)
    assert embed(model, tokenizer, [], Pooling("mean", True)).numel() == 0
