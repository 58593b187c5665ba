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
from .baselines import factor_model, fisher_row_importance
from .compact import WEIGHTS_NAME, truncated_params
from .config import RankDynaConfig
from .data.glue import GlueDataset, GlueTask, compute_metrics, get_task, load_glue
from .io import atomic_write_dir, atomic_write_text
from .plots import plot_history, plot_rank_heatmap
from .report import matrix_table, model_parameters, model_report
from .targets import default_target_names


@dataclass
class CompressSettings:
    """Everything the main job needs; the CLI and the GLUE example fill it from their arguments.

    ``budget=None`` runs plain dense fine-tuning of the same model under the same settings, the
    reference a compressed model is compared with. ``method`` is ``"rankdyna"`` or one of the
    two-round baselines ``"svd"`` and ``"fwsvd"``; ``rankdyna`` holds RankDynaConfig fields.
    ``finetuned_model`` lets a two-round baseline skip its first round by starting from a model
    already fine-tuned on the task under the same settings (the ``finetuned/`` folder of a dense run).
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
    method: str = "rankdyna"
    rankdyna: dict[str, Any] = field(default_factory=dict)
    show_progress: bool = True
    finetuned_model: Optional[str] = None

    def __post_init__(self) -> None:
        # Paths may come as pathlib objects; results.json records them as text.
        self.model, self.output_dir = os.fspath(self.model), os.fspath(self.output_dir)
        self.glue_dir = None if self.glue_dir is None else os.fspath(self.glue_dir)
        self.finetuned_model = None if self.finetuned_model is None else os.fspath(self.finetuned_model)


def _require_model_folder(path: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Model folder not found: {path} (pass a local folder saved with save_pretrained).")


def load_tokenizer(path: str) -> Any:
    """The tokenizer saved beside a model; a folder without one is a clear error."""
    _require_model_folder(path)
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
    _require_model_folder(path)
    kwargs: dict[str, Any] = {"num_labels": task.num_labels}
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


METHODS = ("rankdyna", "svd", "fwsvd")
FINETUNED_DIR = "finetuned"  # where a dense run keeps its fine-tuned model


def compress(settings: CompressSettings) -> dict[str, Any]:
    """Fine-tune (and, with a budget, compress) ``settings.model`` on ``settings.task``; returns the results.

    ``method="rankdyna"`` compresses while fine-tuning, in one round. ``"svd"`` and ``"fwsvd"`` are
    the two-round baselines: dense fine-tuning, truncation at one uniform rank (FWSVD weights the
    rows by Fisher importance gathered over the training set), then fine-tuning the factors with
    the same settings again. Writes ``results.json``, the compact model, its report and pictures
    (and, for RankDyna, the adapter and ``rankdyna_history.json``) into ``settings.output_dir``.
    """
    start = time.perf_counter()
    set_seed(settings.seed)
    task = get_task(settings.task)
    if settings.method not in METHODS:
        raise ValueError(f"Unknown method {settings.method!r}; choose one of {', '.join(METHODS)}.")
    config = None
    if settings.budget is not None and settings.method == "rankdyna":  # validated before any slow work
        config = RankDynaConfig(target_budget=settings.budget, task_type="SEQ_CLS", **settings.rankdyna)
    elif settings.budget is not None and not 0.0 < settings.budget <= 1.0:
        raise ValueError(f"`budget` must be in (0, 1], got {settings.budget}.")
    if settings.finetuned_model is not None and (config is not None or settings.budget is None):
        raise ValueError("`finetuned_model` replaces the first round of the two-round baselines; "
                         "use it with method 'svd' or 'fwsvd' and a budget.")
    tokenizer = load_tokenizer(settings.model)
    train = GlueDataset(tokenizer, load_glue(task, "train", settings.glue_dir), settings.max_seq_length,
                        settings.max_train_samples)
    dev = GlueDataset(tokenizer, load_glue(task, "dev", settings.glue_dir), settings.max_seq_length,
                      settings.max_eval_samples)
    model = load_model(settings.finetuned_model or settings.model, task)
    results: dict[str, Any] = {"settings": asdict(settings), "device": training_device(),
                               "model_params_before": model_parameters(model)}

    def fit(model: torch.nn.Module, trainer_cls: type = Trainer, train_it: bool = True) -> Trainer:
        trainer = trainer_cls(
            model=model, args=_training_arguments(settings), train_dataset=train, eval_dataset=dev,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=lambda output: compute_metrics(task, output.predictions, output.label_ids),
        )
        if train_it:
            trainer.train()
        return trainer

    def score(trainer: Trainer) -> None:
        metrics = {k.removeprefix("eval_"): v for k, v in trainer.evaluate().items() if k.startswith("eval_")}
        results["metrics"] = {name: metrics[name] for name in task.metric_names}
        results["train_steps"] = trainer.state.global_step

    results["model_params_after"] = results["model_params_before"]
    if settings.budget is None:
        score(fit(model))
        results["finetuned_dir"] = _save_finetuned(model, tokenizer, settings)
    elif config is not None:
        model = get_peft_model(model, config)
        trainer = fit(model, RankDynaTrainer)
        score(trainer)  # before merging: the merged model computes the same (tested)
        compact, rounding = _save_rankdyna(model, trainer.rankdyna_callback, settings)
        results.update(rounding, **_save_compact(compact, tokenizer, settings))
    else:
        first_round = fit(model, train_it=settings.finetuned_model is None)
        importance = None
        if settings.method == "fwsvd":
            importance = fisher_row_importance(model, first_round.get_train_dataloader(), default_target_names(model))
        compact = factor_model(model, settings.budget, row_importance=importance)
        score(fit(compact))
        results.update(_save_compact(compact, tokenizer, settings))
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


def training_device() -> str:
    """What the Trainer trains on (it takes a CUDA device when there is one): the card's name, or "cpu"."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


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


def _save_rankdyna(model: Any, callback: RankDynaCallback, settings: CompressSettings) -> tuple[Any, dict]:
    """Save the adapter, the allocation history and its plot; return the merged compact model and,
    with ``rank_multiple``, the target parameters allocated before rounding."""
    output = settings.output_dir
    model.save_pretrained(os.path.join(output, "adapter"))
    callback.write_history(output)
    layers = model.base_model.rankdyna_layers().values()
    try:
        plot_history(callback.history, model.base_model.dense_params(), os.path.join(output, "history.png"))
    except ImportError as error:
        print(f"rankdyna: no history plot written ({error})")
    rounding = {}
    if settings.rankdyna.get("rank_multiple"):
        allocated = sum(truncated_params(layer.rank, layer.in_features, layer.out_features) for layer in layers)
        rounding = {"rank_multiple": settings.rankdyna["rank_multiple"], "target_params_before_rounding": allocated}
    return model.merge_and_unload(), rounding


def _save_finetuned(model: torch.nn.Module, tokenizer: Any, settings: CompressSettings) -> str:
    """Save the dense fine-tuned model with its tokenizer: round 1 that the two-round baselines can reuse."""
    finetuned_dir = os.path.join(settings.output_dir, FINETUNED_DIR)

    def write(folder: str) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    atomic_write_dir(finetuned_dir, write)
    return finetuned_dir


def _save_compact(compact: torch.nn.Module, tokenizer: Any, settings: CompressSettings) -> dict[str, Any]:
    """Save the compact model, its report and rank heat map; return its accounting for the results."""
    compact_dir = os.path.join(settings.output_dir, "compact")
    compact.save_pretrained(compact_dir, tokenizer=tokenizer)
    report = model_report(compact, settings.max_seq_length, os.path.join(compact_dir, WEIGHTS_NAME))
    atomic_write_text(os.path.join(settings.output_dir, "report.json"), json.dumps(report, indent=1))
    try:
        plot_rank_heatmap(matrix_table(compact), os.path.join(settings.output_dir, "ranks.png"))
    except ImportError as error:
        print(f"rankdyna: no rank heat map written ({error})")
    return {
        "compact_dir": compact_dir,
        "target_params_before": report["target_params_dense"],
        "target_params_after": report["target_params"],
        "model_params_after": report["model_params"],
        "file_size_bytes": report["file_size_bytes"],
        "flops_ratio": report["flops_ratio"],
    }
