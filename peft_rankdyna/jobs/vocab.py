"""Vocabulary trimming: keep only the word-embedding rows of the tokens a task's text uses.

A small encoder's word embeddings are a large share of it (MiniLM-L6: 11.7 M of 22.7 M parameters)
and low-rank factoring does not touch them. A model deployed for one task meets the tokens of that
task's text; the rest of a 30,522-token vocabulary is dead weight. Trimming keeps the rows of every
token the tokenizer produces on ``texts`` (plus the special tokens), renumbers them, and rewrites the
tokenizer to the kept vocabulary.

Why the tokenizer still tokenizes the kept text exactly as before (WordPiece): for each word it takes
the longest prefix in the vocabulary, then the longest continuation, and so on. Every piece it chose
on ``texts`` is kept, and no longer prefix was in the full vocabulary, so none is in the kept one:
the same pieces are chosen. Unseen text may split differently or become ``[UNK]``; that is the
accuracy cost, measured on the dev set (``rankdyna evaluate``). Only WordPiece tokenizers (BERT,
DistilBERT, ELECTRA, MPNet, MiniLM) are supported: a BPE vocabulary cannot lose tokens without its
merges being rewritten.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import torch


def used_token_ids(tokenizer: Any, texts: Iterable[str], batch_size: int = 1024) -> list[int]:
    """The sorted ids of every token ``tokenizer`` produces on ``texts``, and of its special tokens."""
    used, texts = set(tokenizer.all_special_ids), list(texts)
    for start in range(0, len(texts), batch_size):
        for ids in tokenizer(texts[start:start + batch_size], add_special_tokens=False)["input_ids"]:
            used.update(ids)
    return sorted(used)


def trim_vocabulary(model: torch.nn.Module, tokenizer: Any, texts: Iterable[str]) -> tuple[Any, dict[str, Any]]:
    """Keep the word embeddings of the tokens ``texts`` use; the new tokenizer and what was kept.

    ``model`` is changed in place (its input embeddings and ``config.vocab_size``/``pad_token_id``),
    after the new tokenizer has been checked to tokenize ``texts`` as the old one did; the returned
    tokenizer maps the kept tokens to the new ids and everything else to ``[UNK]``.
    """
    if model.get_output_embeddings() is not None:
        raise ValueError("The model has output embeddings (a language-model head); trimming the vocabulary "
                         "is for encoders with a task head.")
    texts = list(texts)
    keep = used_token_ids(tokenizer, texts)
    new_id = {old: new for new, old in enumerate(keep)}
    trimmed_tokenizer = _renumbered(tokenizer, _wordpiece_state(tokenizer), new_id)
    _check_same_tokens(tokenizer, trimmed_tokenizer, texts, new_id)
    embeddings = model.get_input_embeddings()
    padding = None if embeddings.padding_idx is None else new_id[embeddings.padding_idx]
    trimmed = torch.nn.Embedding(len(keep), embeddings.embedding_dim, padding_idx=padding,
                                 dtype=embeddings.weight.dtype, device=embeddings.weight.device)
    with torch.no_grad():
        trimmed.weight.copy_(embeddings.weight[torch.tensor(keep, device=embeddings.weight.device)])
    model.set_input_embeddings(trimmed)
    model.config.vocab_size = len(keep)
    if getattr(model.config, "pad_token_id", None) is not None:
        model.config.pad_token_id = new_id[model.config.pad_token_id]
    stats = {"vocab_before": embeddings.num_embeddings, "vocab_after": len(keep),
             "embedding_params_before": embeddings.weight.numel(), "embedding_params_after": trimmed.weight.numel()}
    return trimmed_tokenizer, stats


def _check_same_tokens(full: Any, trimmed: Any, texts: list[str], new_id: dict[int, int],
                       sample: int = 2000) -> None:
    """The trimmed tokenizer gives the kept text the renumbered ids of the full one (a sample, pairs included)."""
    texts = texts[:sample]
    seconds = texts[1::2]
    for args in ((texts,), (texts[0::2][: len(seconds)], seconds)):
        expected = [[new_id[i] for i in ids] for ids in full(*args)["input_ids"]]
        if trimmed(*args)["input_ids"] != expected:
            raise RuntimeError("The trimmed tokenizer tokenizes the kept text differently from the full one; "
                               "its special-token handling is not one this trimming knows.")


def _wordpiece_state(tokenizer: Any) -> dict[str, Any]:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("Trimming the vocabulary needs a fast (tokenizers-backed) tokenizer.")
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    if state["model"]["type"] != "WordPiece":
        raise ValueError(f"Trimming supports WordPiece tokenizers only, not {state['model']['type']}: a "
                         f"{state['model']['type']} vocabulary cannot lose tokens without rewriting its merges.")
    return state


def _renumbered(tokenizer: Any, state: dict[str, Any], new_id: dict[int, int]) -> Any:
    """``tokenizer`` with its WordPiece vocabulary cut to the keys of ``new_id`` and renumbered."""
    from tokenizers import Tokenizer

    state["model"]["vocab"] = {token: new_id[old] for token, old in state["model"]["vocab"].items() if old in new_id}
    for token in state["added_tokens"]:
        token["id"] = new_id[token["id"]]  # the special tokens are always kept
    processor = state.get("post_processor") or {}
    for special in processor.get("special_tokens", {}).values():  # TemplateProcessing
        special["ids"] = [new_id[old] for old in special["ids"]]
    for name in ("cls", "sep"):  # BertProcessing: [token, id]
        if name in processor:
            processor[name][1] = new_id[processor[name][1]]
    if state.get("padding"):
        state["padding"]["pad_id"] = new_id[state["padding"]["pad_id"]]
    init = {name: value for name, value in tokenizer.init_kwargs.items()
            if name not in ("vocab_file", "tokenizer_file", "name_or_path")}
    return type(tokenizer)(tokenizer_object=Tokenizer.from_str(json.dumps(state)), **init)
