"""Classification and regression on labelled text: a GLUE task or your own files; the dev set scores the model."""

from __future__ import annotations

import warnings
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

from ...loading import require_model_folder
from ..collapse import check_collapse
from ..data.files import load_files
from ..data.glue import get_task, load_glue
from ..data.labelled import LabelledSplit, LabelledTask, TokenizedSplit, compute_metrics
from .base import Objective, Scores


class Classification(Objective):
    """Fine-tune a sequence classifier (or regressor) on a labelled task; dev metrics, majority-class collapse check."""

    name = "classification"
    task_type = "SEQ_CLS"
    export_task = "text-classification"
    methods = ("rankdyna", "svd", "fwsvd", "asvd", "svdllm")
    dense_reference = True
    first_round = True

    def check(self) -> None:
        super().check()
        settings = self.settings
        if (settings.train_file is None) != (settings.validation_file is None):
            raise ValueError("Give both --train-file and --validation-file (your own data), or neither (a GLUE task).")
        if settings.train_file is None and not settings.task:
            raise ValueError("Name a GLUE task (--task), or give your own --train-file and --validation-file.")

    def read_data(self) -> None:
        self.train_split, self.dev_split, self.task = self.splits()

    def prepare(self, tokenizer: Any) -> None:
        settings = self.settings
        self.train_dataset = TokenizedSplit(tokenizer, self.train_split, settings.max_seq_length,
                                            settings.max_train_samples)
        self.dev = TokenizedSplit(tokenizer, self.dev_split, settings.max_seq_length, settings.max_eval_samples)
        self.collator = DataCollatorWithPadding(tokenizer)

    def splits(self) -> tuple[LabelledSplit, LabelledSplit, LabelledTask]:
        """The training and dev splits and the task: your own files, or the GLUE task's."""
        settings = self.settings
        if settings.train_file is not None:
            return load_files(settings.train_file, settings.validation_file, settings.text_columns,
                              settings.label_column)
        task = get_task(settings.task)
        return load_glue(task, "train", settings.glue_dir), load_glue(task, "dev", settings.glue_dir), task

    def load_model(self, path: str) -> nn.Module:
        return load_classifier(path, self.task)

    def score(self, model: nn.Module) -> Scores:
        predictions = predict(model, self.dev, self.collator)
        labels = np.asarray(self.dev.labels)
        metrics = compute_metrics(self.task, predictions, labels)
        collapse = check_collapse(predictions, labels, metrics,
                                  lambda p, y: compute_metrics(self.task, p, y), self.task.is_regression).to_dict()
        if collapse["collapsed"]:
            warnings.warn(f"rankdyna compress: {collapse['message']}", stacklevel=2)
        return Scores(metrics, collapse)


def load_classifier(path: str, task: LabelledTask) -> nn.Module:
    """A sequence-classification model from a local folder, with the task's head."""
    require_model_folder(path)
    kwargs: dict[str, Any] = {"num_labels": task.num_labels, **task.label_maps()}
    if task.is_regression:
        kwargs["problem_type"] = "regression"
    try:
        return AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    except RuntimeError as error:  # transformers' own message names a tensor, not the cause
        if "size mismatch" not in str(error):
            raise
        raise ValueError(f"{path} holds a classification head of another size than task {task.name!r} needs "
                         f"({task.num_labels} output(s)); start from the pre-trained encoder, or from a model "
                         "fine-tuned on this task.") from error


@torch.no_grad()
def predict(model: nn.Module, dataset: TokenizedSplit, collator: Any, batch_size: int = 64) -> np.ndarray:
    """The logits (or scores) of ``model`` on every row of ``dataset``, in order, in fp32."""
    model.eval()
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collator)
    outputs = []
    for batch in loader:
        batch.pop("labels")
        outputs.append(model(**batch.to(device)).logits.float().cpu())
    return torch.cat(outputs).numpy()


def evaluate(model: nn.Module, tokenizer: Any, task: LabelledTask, dev: LabelledSplit,
             max_seq_length: int = 128, limit: Optional[int] = None) -> dict[str, float]:
    """The task's metrics of ``model`` on the split ``dev`` (``rankdyna evaluate``)."""
    dataset = TokenizedSplit(tokenizer, dev, max_seq_length, limit)
    return compute_metrics(task, predict(model, dataset, DataCollatorWithPadding(tokenizer)), dataset.labels)
