"""Sentence embeddings: the pooling a sentence-transformers model folder declares, and an encoder that applies it.

A sentence-transformers folder (all-MiniLM-L6-v2, say) lists its modules in ``modules.json``: the
transformer, a ``Pooling`` module configured in ``1_Pooling/config.json`` (mean, CLS or max over
the tokens) and, optionally, ``Normalize``. :func:`read_pooling` reads them; a plain transformers
folder gets mean pooling without normalisation.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

POOLING_MODES = ("mean", "cls", "max")
# The sentence-transformers files that describe the pooling; copied beside a compact model.
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
                               "1_Pooling")


@dataclass(frozen=True)
class Pooling:
    """How token states become one sentence embedding."""

    mode: str = "mean"
    normalize: bool = False

    def __post_init__(self) -> None:
        if self.mode not in POOLING_MODES:
            raise ValueError(f"Pooling mode must be one of {', '.join(POOLING_MODES)}, got {self.mode!r}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_pooling(model_dir: str) -> Pooling:
    """The pooling a (sentence-transformers) model folder declares; mean pooling when it declares none."""
    modules_path = os.path.join(model_dir, "modules.json")
    if not os.path.isfile(modules_path):
        return Pooling()
    with open(modules_path, encoding="utf-8") as handle:
        modules = json.load(handle)
    types = [m.get("type", "") for m in modules]
    normalize = any(t.endswith("Normalize") for t in types)
    pooling_module = next((m for m in modules if m.get("type", "").endswith("Pooling")), None)
    if pooling_module is None:
        return Pooling(normalize=normalize)
    config_path = os.path.join(model_dir, pooling_module.get("path", ""), "config.json")
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    chosen = [mode for mode, key in (("mean", "pooling_mode_mean_tokens"), ("cls", "pooling_mode_cls_token"),
                                     ("max", "pooling_mode_max_tokens")) if config.get(key)]
    if len(chosen) != 1 or config.get("pooling_mode_mean_sqrt_len_tokens"):
        raise ValueError(f"{config_path}: RankDyna supports exactly one of mean, CLS or max pooling, got {config}.")
    return Pooling(mode=chosen[0], normalize=normalize)


def copy_pooling_files(source_dir: str, target_dir: str) -> None:
    """Copy the sentence-transformers description files (when there are any) from one folder to another."""
    for name in SENTENCE_TRANSFORMERS_FILES:
        source = os.path.join(source_dir, name)
        if os.path.isdir(source):
            shutil.copytree(source, os.path.join(target_dir, name), dirs_exist_ok=True)
        elif os.path.isfile(source):
            shutil.copy(source, target_dir)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """One embedding per sequence from the token states ``hidden`` (batch × tokens × dim), padding excluded."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if pooling.mode == "mean":
        embedding = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    elif pooling.mode == "cls":
        embedding = hidden[:, 0]
    else:
        embedding = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).amax(1)
    return F.normalize(embedding, p=2, dim=-1) if pooling.normalize else embedding


class SentenceEncoder(nn.Module):
    """An encoder (a transformers base model, or a PEFT model around one) followed by the pooling.

    ``forward`` returns the embeddings and, given ``teacher`` embeddings, the distillation loss: the
    mean squared difference between student and teacher embeddings (sentence-transformers'
    ``MSELoss``), so ``transformers.Trainer`` trains it as it trains any model.
    """

    def __init__(self, encoder: nn.Module, pooling: Pooling) -> None:
        super().__init__()
        self.encoder, self.pooling = encoder, pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, teacher: Optional[torch.Tensor] = None,
                **inputs: Any) -> ModelOutput:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
        embeddings = pool(hidden, attention_mask, self.pooling)
        loss = None if teacher is None else F.mse_loss(embeddings.float(), teacher.float())
        return ModelOutput(loss=loss, embeddings=embeddings)
