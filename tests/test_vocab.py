"""Vocabulary trimming: the kept text tokenizes and computes exactly as before; the rest maps to [UNK]."""

import json

import pytest
import torch
from conftest import tiny_model
from transformers import BertTokenizerFast

from peft_rankdyna.baselines import factor_model
from peft_rankdyna.compact import AutoCompactModel
from peft_rankdyna.jobs.vocab import trim_vocabulary, used_token_ids

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "play", "playing", "##ing", "##ed", "##s", "the", "cat",
         "dog", "sat", "on", "mat", "a", "big", "small", "red"]
KEPT_TEXT = ["the cat sat on the mat", "a dog played", "playing big"]


def _tokenizer(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB))
    return BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))


def test_kept_text_tokenizes_and_computes_as_before_and_unused_rows_go(tmp_path):
    tokenizer, model = _tokenizer(tmp_path), tiny_model().eval()
    reference = {"single": tokenizer(KEPT_TEXT, padding=True, return_tensors="pt"),
                 "pair": tokenizer(KEPT_TEXT[:2], KEPT_TEXT[1:], padding=True, return_tensors="pt")}
    with torch.no_grad():
        expected = {name: model(**inputs).logits for name, inputs in reference.items()}
    rows = model.get_input_embeddings().weight.detach().clone()
    trimmed, stats = trim_vocabulary(model, tokenizer, KEPT_TEXT)
    kept = used_token_ids(tokenizer, KEPT_TEXT)
    assert kept == sorted({0, 1, 2, 3, 4} | {VOCAB.index(t) for t in ["the", "cat", "sat", "on", "mat", "a", "dog",
                                                                    "play", "##ed", "playing", "big"]})
    assert stats["vocab_before"] == 99 and stats["vocab_after"] == len(kept) == model.config.vocab_size
    torch.testing.assert_close(model.get_input_embeddings().weight, rows[kept], rtol=0, atol=0)
    for name, inputs in {"single": trimmed(KEPT_TEXT, padding=True, return_tensors="pt"),
                         "pair": trimmed(KEPT_TEXT[:2], KEPT_TEXT[1:], padding=True, return_tensors="pt")}.items():
        assert inputs["input_ids"].max() < len(kept)
        with torch.no_grad():
            torch.testing.assert_close(model(**inputs).logits, expected[name], rtol=0, atol=0)
    assert trimmed.pad_token_id == 0 and trimmed.unk_token_id == 1
    assert trimmed.tokenize("the small cat") == ["the", "[UNK]", "cat"]  # "small" was not in the kept text
    assert tokenizer.tokenize("plays") == ["play", "##s"] and trimmed.tokenize("plays") == ["[UNK]"]


def test_trimming_refuses_what_it_cannot_do(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import BertForMaskedLM, PreTrainedTokenizerFast

    from conftest import TINY_CONFIGS

    with pytest.raises(ValueError, match="language-model head"):
        trim_vocabulary(BertForMaskedLM(TINY_CONFIGS["bert"]()), _tokenizer(tmp_path), KEPT_TEXT)
    bpe = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE({"a": 0, "b": 1, "ab": 2}, [("a", "b")])))
    with pytest.raises(ValueError, match="WordPiece tokenizers only, not BPE"):
        trim_vocabulary(tiny_model(), bpe, KEPT_TEXT)


def test_cli_trim_vocab_writes_a_compact_folder_that_loads(tmp_path, capsys):
    from peft_rankdyna.jobs.cli import main

    factor_model(tiny_model(), 0.5).save_pretrained(tmp_path / "compact", tokenizer=_tokenizer(tmp_path))
    (tmp_path / "texts.txt").write_text("\n".join(KEPT_TEXT))
    assert main(["trim-vocab", str(tmp_path / "compact"), str(tmp_path / "trimmed"), "--texts",
                 str(tmp_path / "texts.txt")]) == 0
    assert "vocabulary 99 -> 16 tokens" in capsys.readouterr().out
    model = AutoCompactModel.from_pretrained(tmp_path / "trimmed")
    assert model.get_input_embeddings().weight.shape[0] == 16
    stats = json.loads((tmp_path / "trimmed" / "vocabulary.json").read_text())
    assert stats["texts"]["count"] == 3 and stats["embedding_params_after"] == 16 * 32
    tokenizer = BertTokenizerFast.from_pretrained(tmp_path / "trimmed")
    assert tokenizer.tokenize("a red dog") == ["a", "[UNK]", "dog"]
    assert main(["trim-vocab", str(tmp_path / "missing"), str(tmp_path / "o"), "--texts", "x.txt"]) == 2


def test_a_tokenizer_that_tokenizes_differently_is_caught_before_the_model_changes(tmp_path, monkeypatch):
    import peft_rankdyna.jobs.vocab as vocab

    tokenizer, model = _tokenizer(tmp_path), tiny_model()
    monkeypatch.setattr(vocab, "_renumbered", lambda full, state, new_id: full)  # ids not renumbered
    with pytest.raises(RuntimeError, match="tokenizes the kept text differently"):
        trim_vocabulary(model, tokenizer, KEPT_TEXT)
    assert model.get_input_embeddings().weight.shape[0] == 99 and model.config.vocab_size == 99
