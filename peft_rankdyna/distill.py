"""Compress a sentence-embedding model without labels: the dense model teaches, the compressed one learns.

``rankdyna compress --objective embedding-distillation --texts F``: the pre-trained model is the
teacher; every training text's teacher embedding (pooled as the model folder declares, see
:mod:`peft_rankdyna.pooling`) is computed once; the student — the RankDyna model, or for the
baseline the uniform truncated SVD of the teacher — is trained to reproduce it (mean squared error
between the embeddings), so RankDyna's importance scores come from that loss. The compact student
is saved with the teacher's pooling files, so it is an embedding model like the teacher.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from peft import get_peft_model
from transformers import AutoModel, Trainer

from .baselines import factor_model
from .config import RankDynaConfig
from .data.files import read_texts
from .io import atomic_write_text
from .loading import load_tokenizer, require_model_folder
from .pipeline import CompressSettings, save_compact, save_rankdyna, training_arguments, training_device
from .pooling import Pooling, SentenceEncoder, copy_pooling_files, pool, read_pooling
from .report import model_parameters
from .trainer import RankDynaTrainer

HELD_OUT = 0.05  # share of the texts kept for validation when no validation texts are given


@torch.no_grad()
def embed(model: torch.nn.Module, tokenizer: Any, texts: list[str], pooling: Pooling, max_length: int = 128,
          batch_size: int = 64) -> torch.Tensor:
    """Pooled embeddings of ``texts`` (fp32, on the CPU), in order."""
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt").to(device)
        hidden = model(**batch).last_hidden_state
        chunks.append(pool(hidden, batch["attention_mask"], pooling).float().cpu())
    return torch.cat(chunks)


class TeacherTargets(torch.utils.data.Dataset):
    """Tokenised texts, each with its teacher embedding as the target."""

    def __init__(self, tokenizer: Any, texts: list[str], targets: torch.Tensor, max_length: int) -> None:
        self.encodings = tokenizer(texts, truncation=True, max_length=max_length)
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**{key: values[index] for key, values in self.encodings.items()}, "teacher": self.targets[index]}


def collate(tokenizer: Any) -> Any:
    """Pad the tokens with ``tokenizer`` and stack the teacher embeddings."""

    def call(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        teacher = torch.stack([item.pop("teacher") for item in items])
        return {**tokenizer.pad(items, return_tensors="pt"), "teacher": teacher}

    return call


def cosine_report(student: torch.Tensor, teacher: torch.Tensor) -> dict[str, float]:
    """Mean and 5th-percentile cosine similarity between paired student and teacher embeddings."""
    cosines = F.cosine_similarity(student, teacher, dim=-1).numpy()
    return {"mean_cosine": float(cosines.mean()), "p5_cosine": float(np.percentile(cosines, 5))}


def distill(settings: CompressSettings) -> dict[str, Any]:
    """Compress ``settings.model`` as an embedding model by distillation from itself; returns the results.

    ``settings.method`` is ``"rankdyna"`` or ``"svd"`` (the uniform truncated SVD of the teacher,
    trained with the same distillation). Writes ``results.json`` (mean student–teacher cosine on the
    validation texts), the compact model with its pooling files and its report into ``settings.output_dir``.
    """
    start = time.perf_counter()
    if settings.budget is None or settings.method not in ("rankdyna", "svd"):
        raise ValueError("Embedding distillation compresses with --method rankdyna or svd and a --budget "
                         "(the dense model is the teacher itself).")
    config = None
    if settings.method == "rankdyna":  # validated before any slow work
        config = RankDynaConfig(target_budget=settings.budget, task_type="FEATURE_EXTRACTION", **settings.rankdyna)
    texts = read_texts(settings.texts, settings.text_columns[0] if settings.text_columns else None)
    if settings.validation_texts:
        validation = read_texts(settings.validation_texts, settings.text_columns[0] if settings.text_columns else None)
    else:
        held = max(1, int(HELD_OUT * len(texts)))
        texts, validation = texts[:-held], texts[-held:]
    texts = texts[: settings.max_train_samples] if settings.max_train_samples else texts
    require_model_folder(settings.model)
    tokenizer, pooling = load_tokenizer(settings.model), read_pooling(settings.model)
    torch.manual_seed(settings.seed)
    teacher = AutoModel.from_pretrained(settings.model)
    targets, validation_targets = (embed(teacher, tokenizer, t, pooling, settings.max_seq_length)
                                   for t in (texts, validation))
    results: dict[str, Any] = {"settings": asdict(settings), "device": training_device(), "pooling": pooling.to_dict(),
                               "model_params_before": model_parameters(teacher), "train_texts": len(texts),
                               "validation_texts": len(validation)}
    student = get_peft_model(teacher, config) if config is not None else factor_model(teacher, settings.budget)
    encoder = SentenceEncoder(student, pooling)
    trainer = (RankDynaTrainer if config is not None else Trainer)(
        model=encoder, args=training_arguments(settings),
        train_dataset=TeacherTargets(tokenizer, texts, targets, settings.max_seq_length), data_collator=collate(tokenizer))
    trainer.train()
    results["train_steps"] = trainer.state.global_step
    results["metrics"] = cosine_report(embed(student, tokenizer, validation, pooling, settings.max_seq_length),
                                       validation_targets)
    if config is not None:
        compact, rounding = save_rankdyna(student, trainer.rankdyna_callback, settings)
        results.update(rounding)
    else:
        compact = student
    results.update(save_compact(compact, tokenizer, settings, extra_files=lambda d: copy_pooling_files(settings.model, d)))
    results["wall_time_s"] = time.perf_counter() - start
    atomic_write_text(os.path.join(settings.output_dir, "results.json"), json.dumps(results, indent=2))
    return results
