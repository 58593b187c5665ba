"""The main job: fine-tune and compress a pre-trained encoder on a GLUE task in one round."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch
from peft import get_peft_model
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)

from .callback import RankDynaCallback
from .config import RankDynaConfig
from .data.glue import GlueDataset, GlueTask, compute_metrics, get_task, load_glue
from .io import atomic_write_text


@dataclass
class CompressSettings:
    """Everything the main job needs; the CLI and the GLUE example fill it from their arguments.

    ``budget=None`` runs plain dense fine-tuning of the same model under the same settings, the
    reference a compressed model is compared with.
    """

    model: str
    task: str
    output_dir: str
    budget: Optional[float] = 0.5
    epochs: float = 3.0
    learning_rate: float = 5e-5
    batch_size: int = 16
    max_seq_length: int = 128
    seed: int = 42
    max_steps: int = -1
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    glue_dir: Optional[str] = None
    rankdyna: dict[str, Any] = field(default_factory=dict)
    show_progress: bool = True

    def __post_init__(self) -> None:
        # Paths may come as pathlib objects; results.json records them as text.
        self.model, self.output_dir = os.fspath(self.model), os.fspath(self.output_dir)
        self.glue_dir = None if self.glue_dir is None else os.fspath(self.glue_dir)


def load_tokenizer(path: str) -> Any:
    """The tokenizer saved beside a model; a folder without one is a clear error."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Model folder not found: {path} (pass a local folder saved with save_pretrained).")
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, TypeError, ValueError) as error:
        raise ValueError(f"No usable tokenizer in {path} ({error}); save the tokenizer beside the model.") from None


def load_model(path: str, task: GlueTask) -> torch.nn.Module:
    """A sequence-classification model from a local folder, with the task's head."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Model folder not found: {path} (pass a local folder saved with save_pretrained).")
    kwargs: dict[str, Any] = {"num_labels": task.num_labels}
    if task.is_regression:
        kwargs["problem_type"] = "regression"
    return AutoModelForSequenceClassification.from_pretrained(path, **kwargs)


def count_parameters(model: torch.nn.Module) -> int:
    """Parameters of a module, each tensor once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def compress(settings: CompressSettings) -> dict[str, Any]:
    """Fine-tune (and, with a budget, compress) ``settings.model`` on ``settings.task``; returns the results.

    Writes ``results.json`` and, for RankDyna, the adapter and ``rankdyna_history.json`` into
    ``settings.output_dir``.
    """
    start = time.perf_counter()
    set_seed(settings.seed)
    task = get_task(settings.task)
    config = None
    if settings.budget is not None:  # validated before any slow work
        config = RankDynaConfig(target_budget=settings.budget, task_type="SEQ_CLS", **settings.rankdyna)
    tokenizer = load_tokenizer(settings.model)
    train = GlueDataset(tokenizer, load_glue(task, "train", settings.glue_dir), settings.max_seq_length,
                     settings.max_train_samples)
    dev = GlueDataset(tokenizer, load_glue(task, "dev", settings.glue_dir), settings.max_seq_length,
                   settings.max_eval_samples)
    model = load_model(settings.model, task)
    dense_model_params = count_parameters(model)
    if config is not None:
        model = get_peft_model(model, config)

    trainer = Trainer(
        model=model,
        args=_training_arguments(settings),
        train_dataset=train,
        eval_dataset=dev,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=lambda output: compute_metrics(task, output.predictions, output.label_ids),
    )
    callback = RankDynaCallback.attach(trainer) if settings.budget is not None else None
    trainer.train()
    metrics = {k.removeprefix("eval_"): v for k, v in trainer.evaluate().items() if k.startswith("eval_")}
    results = {
        "settings": asdict(settings),
        "metrics": {name: metrics[name] for name in task.metric_names},
        "train_steps": trainer.state.global_step,
        **_parameter_summary(model, dense_model_params, settings.budget is not None),
    }
    if callback is not None:
        model.save_pretrained(os.path.join(settings.output_dir, "adapter"))
        callback.write_history(settings.output_dir)
    results["wall_time_s"] = time.perf_counter() - start
    atomic_write_text(os.path.join(settings.output_dir, "results.json"), json.dumps(results, indent=2))
    return results


def _training_arguments(settings: CompressSettings) -> TrainingArguments:
    return TrainingArguments(
        output_dir=settings.output_dir,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=64,
        weight_decay=0.01,
        warmup_ratio=0.06,
        seed=settings.seed,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=50,
        report_to=[],
        disable_tqdm=not settings.show_progress,
        use_cpu=not torch.cuda.is_available(),
    )


def _parameter_summary(model: torch.nn.Module, dense_model_params: int, compressed: bool) -> dict[str, int]:
    if not compressed:
        return {"model_params_before": dense_model_params, "model_params_after": dense_model_params}
    rankdyna = model.base_model
    dense_targets, kept_targets = rankdyna.dense_params(), rankdyna.kept_params()
    return {
        "target_params_before": dense_targets,
        "target_params_after": kept_targets,
        "model_params_before": dense_model_params,
        "model_params_after": dense_model_params - dense_targets + kept_targets,
    }
