"""Compress a sentence-embedding model without labels: the dense model teaches, the compressed one learns.

``rankdyna compress --objective embedding-distillation --texts F``: the pre-trained model is the
teacher; every training text's teacher embedding (pooled as the model folder declares, see
:mod:`peft_rankdyna.pooling`) is computed once; the student — the RankDyna model, or for the
baseline the uniform truncated SVD of the teacher — is trained to reproduce it (mean squared error
between the embeddings), so RankDyna's importance scores come from that loss. The compact student
is saved with the teacher's pooling files, so it is an embedding model like the teacher.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel
from transformers.utils import ModelOutput

from ...loading import require_model_folder
from ...pooling import Pooling, copy_pooling_files, pool, read_pooling
from ..collapse import check_embedding_collapse
from ..data.files import read_texts
from .base import Objective, Scores

HELD_OUT = 0.05  # share of the texts kept for validation when no validation texts are given


class EmbeddingDistillation(Objective):
    """Train the compressed model's pooled embeddings towards the dense model's; scored by their cosine."""

    name = "embedding-distillation"
    task_type = "FEATURE_EXTRACTION"
    export_task = "feature-extraction"
    methods = ("rankdyna", "svd", "asvd", "svdllm")
    dense_reference = False  # the dense model is the teacher itself
    first_round = False  # the pre-trained model already is what the student learns from

    def check(self) -> None:
        if not self.settings.texts:
            raise ValueError("Embedding distillation learns from unlabelled text: give --texts FILE.")
        super().check()

    def read_data(self) -> None:
        settings = self.settings
        texts = read_texts(settings.texts, settings.text_columns)
        if settings.validation_texts:
            self.validation = read_texts(settings.validation_texts, settings.text_columns)
        else:
            held = max(1, int(HELD_OUT * len(texts)))
            texts, self.validation = texts[:-held], texts[-held:]
        self.texts = texts[: settings.max_train_samples] if settings.max_train_samples else texts
        self.pooling = read_pooling(settings.model)

    def prepare(self, tokenizer: Any) -> None:
        """Tokenise the texts and compute every teacher embedding once, with the pre-trained model."""
        settings = self.settings
        self.tokenizer = tokenizer
        teacher = AutoModel.from_pretrained(settings.model)
        targets = embed(teacher, tokenizer, self.texts, self.pooling, settings.max_seq_length)
        self.validation_targets = embed(teacher, tokenizer, self.validation, self.pooling, settings.max_seq_length)
        self.train_dataset = TeacherTargets(tokenizer, self.texts, targets, settings.max_seq_length)
        self.collator = collate(tokenizer)

    def load_model(self, path: str) -> nn.Module:
        require_model_folder(path)
        return AutoModel.from_pretrained(path)

    def training_model(self, model: nn.Module) -> nn.Module:
        return SentenceEncoder(model, self.pooling)

    def score(self, model: nn.Module) -> Scores:
        student = embed(model, self.tokenizer, self.validation, self.pooling, self.settings.max_seq_length)
        return Scores(cosine_report(student, self.validation_targets),
                      check_embedding_collapse(student.numpy(), self.validation_targets.numpy()).to_dict())

    def extra_files(self, folder: str) -> None:
        copy_pooling_files(self.settings.model, folder)

    def describe(self) -> dict[str, Any]:
        return {"pooling": self.pooling.to_dict(), "train_texts": len(self.train_dataset),
                "validation_texts": len(self.validation)}


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


@torch.no_grad()
def embed(model: nn.Module, tokenizer: Any, texts: list[str], pooling: Pooling, max_length: int = 128,
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
