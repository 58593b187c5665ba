"""Sentence embeddings: the pooling a sentence-transformers model folder declares, and how it is computed.

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
from typing import Any

import torch
import torch.nn.functional as F

POOLING_MODES = ("mean", "cls", "max")
# The sentence-transformers modules an embedding is computed with here; any other (Dense, say) is refused.
SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")
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
    unsupported = [t for t in types if not t.endswith(SUPPORTED_MODULES)]
    if unsupported:
        raise ValueError(f"{modules_path}: module {unsupported[0]!r} is not one RankDyna computes (it supports "
                         f"{', '.join(SUPPORTED_MODULES)}); its embeddings would differ from SentenceTransformer's.")
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
