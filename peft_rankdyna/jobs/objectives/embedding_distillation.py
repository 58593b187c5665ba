"""Compress a sentence-embedding model without labels: the dense model teaches, the compressed one learns.

``rankdyna compress --objective embedding-distillation --texts F``: the pre-trained model is the
teacher; every training text's teacher embedding (pooled as the model folder declares, see
:mod:`peft_rankdyna.pooling`) is computed once; the student — the RankDyna model, or for the
baseline the uniform truncated SVD of the teacher — is trained to reproduce it, so RankDyna's
importance scores come from that loss: the mean squared error between the embeddings (the default),
1 − their cosine, or both, plus, given a ``token_loss_weight``, the squared difference of the last
hidden states at every real token (the teacher then runs beside the student). The compact student
is saved with the teacher's pooling files, so it is an embedding model like the teacher. It is
scored on the validation texts by its cosine to the teacher and by the neighbours an index would
return (:mod:`peft_rankdyna.jobs.embedding_metrics`).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel
from transformers.utils import ModelOutput

from ...loading import require_model_folder
from ...pooling import Pooling, copy_pooling_files, pool, read_pooling
from ..collapse import check_embedding_collapse
from ..data.files import read_texts
from ..embedding_metrics import cosine_report, index_report
from ..settings import DISTILL_LOSSES
from .base import Objective, Scores

HELD_OUT = 0.05  # share of the texts kept for validation when no validation texts are given
NEIGHBOURS = 10  # the k of the index measures (recall@10), scored where there are more validation texts than k


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
        self.teacher = teacher.requires_grad_(False) if settings.token_loss_weight else None

    def load_model(self, path: str) -> nn.Module:
        require_model_folder(path)
        return AutoModel.from_pretrained(path)

    def training_model(self, model: nn.Module) -> nn.Module:
        settings = self.settings
        return SentenceEncoder(model, self.pooling, settings.distill_loss, self.teacher, settings.token_loss_weight)

    def scored_model(self, training_model: nn.Module) -> nn.Module:
        return training_model.encoder

    def score(self, model: nn.Module) -> Scores:
        student = embed(model, self.tokenizer, self.validation, self.pooling, self.settings.max_seq_length)
        metrics = cosine_report(student, self.validation_targets)
        if len(self.validation) > NEIGHBOURS:
            metrics.update(index_report(student, self.validation_targets, NEIGHBOURS))
        return Scores(metrics, check_embedding_collapse(student.numpy(), self.validation_targets.numpy()).to_dict())

    def extra_files(self, folder: str) -> None:
        copy_pooling_files(self.settings.model, folder)

    def describe(self) -> dict[str, Any]:
        settings = self.settings
        return {"pooling": self.pooling.to_dict(), "train_texts": len(self.train_dataset),
                "validation_texts": len(self.validation), "distill_loss": settings.distill_loss,
                "token_loss_weight": settings.token_loss_weight}


class SentenceEncoder(nn.Module):
    """An encoder (a transformers base model, or a PEFT model around one) followed by the pooling.

    ``forward`` returns the embeddings and, given ``teacher`` embeddings, the distillation loss
    (:func:`embedding_loss`; with a ``teacher_model`` and ``token_weight`` > 0 plus that weight times
    :func:`token_loss`), so ``transformers.Trainer`` trains it as it trains any model. The teacher
    model is held outside the module tree: the Trainer neither optimises nor saves it.
    """

    def __init__(self, encoder: nn.Module, pooling: Pooling, loss: str = "mse",
                 teacher_model: Optional[nn.Module] = None, token_weight: float = 0.0) -> None:
        super().__init__()
        if token_weight and teacher_model is None:
            raise ValueError("A token-level loss needs the teacher model to run beside the student.")
        self.encoder, self.pooling, self.loss, self.token_weight = encoder, pooling, loss, token_weight
        self._teacher = (teacher_model,)  # a tuple, so not a submodule

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, teacher: Optional[torch.Tensor] = None,
                **inputs: Any) -> ModelOutput:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
        embeddings = pool(hidden, attention_mask, self.pooling)
        loss = None if teacher is None else embedding_loss(embeddings, teacher, self.loss)
        if loss is not None and self.token_weight:
            teacher_model = self._teacher[0].to(input_ids.device).eval()
            with torch.no_grad():
                target = teacher_model(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
            loss = loss + self.token_weight * token_loss(hidden, target, attention_mask)
        return ModelOutput(loss=loss, embeddings=embeddings)


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """The distillation loss on pooled embeddings: ``"mse"``, ``"cosine"`` (mean 1 − cosine) or ``"mse+cosine"``.

    On normalised embeddings MSE is (1 − cosine)·2/dim, the same direction at a smaller scale; the
    two differ in how gradient clipping and Adam's epsilon treat them, and on unnormalised ones.
    """
    if kind not in DISTILL_LOSSES:
        raise ValueError(f"Unknown distillation loss {kind!r}; choose one of {', '.join(DISTILL_LOSSES)}.")
    student, teacher = student.float(), teacher.float()
    mse = F.mse_loss(student, teacher) if kind in ("mse", "mse+cosine") else 0.0
    cosine = (1 - F.cosine_similarity(student, teacher, dim=-1)).mean() if kind in ("cosine", "mse+cosine") else 0.0
    return mse + cosine


def token_loss(student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of two last hidden states over the real tokens (padding left out)."""
    mask = attention_mask.unsqueeze(-1).float()
    squared = (student.float() - teacher.float()).pow(2) * mask
    return squared.sum() / (mask.sum() * student.shape[-1]).clamp(min=1)


@torch.no_grad()
def embed(model: nn.Module, tokenizer: Any, texts: list[str], pooling: Pooling, max_length: int = 128,
          batch_size: int = 64) -> torch.Tensor:
    """Pooled embeddings of ``texts`` (fp32, on the CPU), in order.

    The texts are batched shortest first (by characters), so a batch is padded to about its own
    length rather than to the longest text that happens to share it; the rows come back in order.
    """
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    chunks = []
    for start in range(0, len(texts), batch_size):
        chosen = [texts[i] for i in order[start:start + batch_size]]
        batch = tokenizer(chosen, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
        hidden = model(**batch).last_hidden_state
        chunks.append(pool(hidden, batch["attention_mask"], pooling).float().cpu())
    embeddings = torch.cat(chunks) if chunks else torch.empty(0)
    return embeddings[torch.argsort(torch.tensor(order))] if order else embeddings


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
