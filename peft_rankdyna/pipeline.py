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
from .trainer import RankDynaTrainer
from .compact import WEIGHTS_NAME, truncated_params
from .config import RankDynaConfig
from .data.glue import GlueDataset, GlueTask, compute_metrics, get_task, load_glue
from .io import atomic_write_text
from .plots import plot_history, plot_rank_heatmap
from .report import matrix_table, model_parameters, model_report


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


def load_rankdyna_adapter(adapter_dir: str, base_model: Optional[str] = None) -> Any:
    """A saved RankDyna adapter on its base model (default: the base path recorded in the adapter)."""
    from peft import PeftConfig, PeftModel

    config = PeftConfig.from_pretrained(adapter_dir)
    base_path = base_model or config.base_model_name_or_path
    if not base_path or not os.path.isdir(base_path):
        raise FileNotFoundError(
            f"Base model of {adapter_dir} not found at {base_path!r}; pass the local base model folder."
        )
    base = AutoModelForSequenceClassification.from_pretrained(base_path)
    return PeftModel.from_pretrained(base, adapter_dir)


def load_folder(directory: str) -> torch.nn.Module:
    """Any saved model folder: a RankDyna adapter (on its base), a compact model, or a dense classifier."""
    from .compact import COMPACT_MODEL_TYPE, CONFIG_NAME, AutoCompactModel

    if os.path.isfile(os.path.join(directory, "adapter_config.json")):
        return load_rankdyna_adapter(directory)
    config_path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{directory} holds neither a model (config.json) nor a RankDyna adapter.")
    with open(config_path, encoding="utf-8") as handle:
        model_type = json.load(handle).get("model_type")
    if model_type == COMPACT_MODEL_TYPE:
        return AutoCompactModel.from_pretrained(directory)
    return AutoModelForSequenceClassification.from_pretrained(directory)


def merge_adapter(adapter_dir: str, base_model: Optional[str] = None) -> torch.nn.Module:
    """The compact model of a saved RankDyna adapter (see ``RankDynaModel.merge_and_unload``)."""
    return load_rankdyna_adapter(adapter_dir, base_model).merge_and_unload()


def load_model(path: str, task: GlueTask) -> torch.nn.Module:
    """A sequence-classification model from a local folder, with the task's head."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Model folder not found: {path} (pass a local folder saved with save_pretrained).")
    kwargs: dict[str, Any] = {"num_labels": task.num_labels}
    if task.is_regression:
        kwargs["problem_type"] = "regression"
    return AutoModelForSequenceClassification.from_pretrained(path, **kwargs)


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
    dense_model_params = model_parameters(model)
    if config is not None:
        model = get_peft_model(model, config)

    trainer_cls = Trainer if config is None else RankDynaTrainer
    trainer = trainer_cls(
        model=model,
        args=_training_arguments(settings),
        train_dataset=train,
        eval_dataset=dev,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=lambda output: compute_metrics(task, output.predictions, output.label_ids),
    )
    trainer.train()
    metrics = {k.removeprefix("eval_"): v for k, v in trainer.evaluate().items() if k.startswith("eval_")}
    results = {
        "settings": asdict(settings),
        "metrics": {name: metrics[name] for name in task.metric_names},
        "train_steps": trainer.state.global_step,
        "model_params_before": dense_model_params,
        "model_params_after": dense_model_params,
    }
    if config is not None:
        results.update(_save_compressed(model, tokenizer, trainer.rankdyna_callback, settings))
    results["wall_time_s"] = time.perf_counter() - start
    atomic_write_text(os.path.join(settings.output_dir, "results.json"), json.dumps(results, indent=2))
    return results


@torch.no_grad()
def evaluate(model: torch.nn.Module, tokenizer: Any, task: GlueTask, glue_dir: Optional[str] = None,
             max_seq_length: int = 128, batch_size: int = 64) -> dict[str, float]:
    """The task's GLUE metrics of ``model`` on the dev split."""
    dev = GlueDataset(tokenizer, load_glue(task, "dev", glue_dir), max_seq_length)
    loader = torch.utils.data.DataLoader(dev, batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer))
    model.eval()
    predictions, labels = [], []
    for batch in loader:
        labels.append(batch.pop("labels"))
        predictions.append(model(**batch).logits.float())
    return compute_metrics(task, torch.cat(predictions).numpy(), torch.cat(labels).numpy())


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


def _save_compressed(model: Any, tokenizer: Any, callback: RankDynaCallback, settings: CompressSettings) -> dict:
    """Save adapter, history, compact model and pictures; return the compact model's accounting."""
    output = settings.output_dir
    model.save_pretrained(os.path.join(output, "adapter"))
    callback.write_history(output)
    dense_targets = model.base_model.dense_params()
    unrounded = sum(truncated_params(layer.rank, layer.in_features, layer.out_features)
                    for layer in model.base_model.rankdyna_layers().values())
    compact = model.merge_and_unload()
    compact_dir = os.path.join(output, "compact")
    compact.save_pretrained(compact_dir, tokenizer=tokenizer)
    report = model_report(compact, settings.max_seq_length, os.path.join(compact_dir, WEIGHTS_NAME))
    atomic_write_text(os.path.join(output, "report.json"), json.dumps(report, indent=1))
    try:
        plot_rank_heatmap(matrix_table(compact), os.path.join(output, "ranks.png"))
        plot_history(callback.history, dense_targets, os.path.join(output, "history.png"))
    except ImportError as error:
        print(f"rankdyna: no plots written ({error})")
    rounding = {}
    if settings.rankdyna.get("rank_multiple"):
        rounding = {"rank_multiple": settings.rankdyna["rank_multiple"], "target_params_before_rounding": unrounded}
    return {
        **rounding,
        "compact_dir": compact_dir,
        "target_params_before": dense_targets,
        "target_params_after": report["target_params"],
        "model_params_after": report["model_params"],
        "file_size_bytes": report["file_size_bytes"],
        "flops_ratio": report["flops_ratio"],
    }
