"""The main job: fine-tune and compress a pre-trained encoder on a GLUE task in one round."""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from collections.abc import Callable
from typing import Any, Optional, Sequence

import torch
from peft import get_peft_model
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from .callback import RankDynaCallback
from .trainer import RankDynaTrainer
from .baselines import factor_model, fisher_row_importance
from .budget import check_budget, matrix_cost
from .collapse import check_collapse
from .compact import WEIGHTS_NAME
from .config import RankDynaConfig
from .data.files import label_maps, load_files
from .data.glue import GlueDataset, GlueSplit, GlueTask, compute_metrics, get_task, load_glue
from .io import atomic_write_dir, atomic_write_text
from .loading import load_tokenizer, require_model_folder
from .plots import plot_history, plot_rank_heatmap
from .report import matrix_table, model_parameters, model_report
from .targets import default_target_names


OBJECTIVES = ("classification", "embedding-distillation")


@dataclass
class CompressSettings:
    """Everything the main job needs; the CLI and the GLUE example fill it from their arguments.

    ``budget=None`` runs plain dense fine-tuning of the same model under the same settings, the
    reference a compressed model is compared with. ``method`` is ``"rankdyna"`` or one of the
    two-round baselines ``"svd"`` and ``"fwsvd"``; ``rankdyna`` holds RankDynaConfig fields.
    ``finetuned_model`` lets a two-round baseline skip its first round by starting from a model
    already fine-tuned on the task under the same settings (the ``finetuned/`` folder of a dense run).
    ``train_file`` and ``validation_file`` (with ``text_columns`` and ``label_column``, inferred when
    not given) replace the GLUE task by your own data; ``task`` is then ignored.
    ``objective="embedding-distillation"`` compresses a sentence-embedding model on unlabelled
    ``texts`` instead (:func:`peft_rankdyna.distill.distill`), checked on ``validation_texts`` or on
    texts held out of ``texts``.
    """

    model: str
    task: Optional[str]
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
    train_file: Optional[str] = None
    validation_file: Optional[str] = None
    text_columns: Optional[list[str]] = None
    label_column: Optional[str] = None
    objective: str = "classification"
    texts: Optional[str] = None
    validation_texts: Optional[str] = None

    def __post_init__(self) -> None:
        # Paths may come as pathlib objects; results.json records them as text.
        self.model, self.output_dir = os.fspath(self.model), os.fspath(self.output_dir)
        self.glue_dir = None if self.glue_dir is None else os.fspath(self.glue_dir)
        self.finetuned_model = None if self.finetuned_model is None else os.fspath(self.finetuned_model)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"Unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}.")
        if self.objective == "embedding-distillation":
            if not self.texts:
                raise ValueError("Embedding distillation learns from unlabelled text: give --texts FILE.")
            return
        if (self.train_file is None) != (self.validation_file is None):
            raise ValueError("Give both --train-file and --validation-file (your own data), or neither (a GLUE task).")
        if self.train_file is None and not self.task:
            raise ValueError("Name a GLUE task (--task), or give your own --train-file and --validation-file.")

    def splits(self) -> tuple[GlueSplit, GlueSplit, GlueTask]:
        """The training and dev splits and the task: your own files, or the GLUE task's."""
        if self.train_file is not None:
            return load_files(self.train_file, self.validation_file, self.text_columns, self.label_column)
        task = get_task(self.task)
        return load_glue(task, "train", self.glue_dir), load_glue(task, "dev", self.glue_dir), task


def load_model(path: str, task: GlueTask) -> torch.nn.Module:
    """A sequence-classification model from a local folder, with the task's head."""
    require_model_folder(path)
    kwargs: dict[str, Any] = {"num_labels": task.num_labels, **label_maps(task)}
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


def compress(settings: CompressSettings, callbacks: Sequence[TrainerCallback] = ()) -> dict[str, Any]:
    """Fine-tune (and, with a budget, compress) ``settings.model`` on ``settings.task``; returns the results.

    ``method="rankdyna"`` compresses while fine-tuning, in one round. ``"svd"`` and ``"fwsvd"`` are
    the two-round baselines: dense fine-tuning, truncation at one uniform rank (FWSVD weights the
    rows by Fisher importance gathered over the training set), then fine-tuning the factors with
    the same settings again. Writes ``results.json``, the compact model, its report and pictures
    (and, for RankDyna, the adapter and ``rankdyna_history.json``) into ``settings.output_dir``.
    ``callbacks`` are added to every Trainer the job builds (after RankDyna's own).
    """
    start = time.perf_counter()
    set_seed(settings.seed)
    config = checked_config(settings)  # cheap checks first, then the data: all before any model is loaded
    train_split, dev_split, task = settings.splits()
    tokenizer = load_tokenizer(settings.model)
    train = GlueDataset(tokenizer, train_split, settings.max_seq_length, settings.max_train_samples)
    dev = GlueDataset(tokenizer, dev_split, settings.max_seq_length, settings.max_eval_samples)
    model = load_model(settings.finetuned_model or settings.model, task)
    results: dict[str, Any] = {"settings": asdict(settings), "device": training_device(),
                               "model_params_before": model_parameters(model)}

    def fit(model: torch.nn.Module, trainer_cls: type = Trainer, train_it: bool = True) -> Trainer:
        trainer = trainer_cls(
            model=model, args=training_arguments(settings), train_dataset=train, eval_dataset=dev,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=lambda output: compute_metrics(task, output.predictions, output.label_ids),
            callbacks=list(callbacks),
        )
        if train_it:
            trainer.train()
        return trainer

    def score(trainer: Trainer) -> None:
        results.update(score_on_dev(trainer, dev, task))

    results["model_params_after"] = results["model_params_before"]
    if settings.budget is None:
        score(fit(model))
        results["finetuned_dir"] = save_finetuned(model, tokenizer, settings)
    elif config is not None:
        model = get_peft_model(model, config)
        trainer = fit(model, RankDynaTrainer)
        score(trainer)  # before merging: the merged model computes the same (tested)
        compact, rounding = save_rankdyna(model, trainer.rankdyna_callback, settings)
        results.update(rounding, **save_compact(compact, tokenizer, settings))
    else:
        first_round = fit(model, train_it=settings.finetuned_model is None)
        importance = None
        if settings.method == "fwsvd":
            importance = fisher_row_importance(model, first_round.get_train_dataloader(), default_target_names(model))
        compact = factor_model(model, settings.budget, row_importance=importance)
        score(fit(compact))
        results.update(save_compact(compact, tokenizer, settings))
    results["wall_time_s"] = time.perf_counter() - start
    atomic_write_text(os.path.join(settings.output_dir, "results.json"), json.dumps(results, indent=2))
    return results


def checked_config(settings: CompressSettings) -> Optional[RankDynaConfig]:
    """Check the method, budget and first-round settings before any slow work; RankDyna's config, if any."""
    if settings.method not in METHODS:
        raise ValueError(f"Unknown method {settings.method!r}; choose one of {', '.join(METHODS)}.")
    if settings.budget is not None and settings.method == "rankdyna":
        config = RankDynaConfig(target_budget=settings.budget, task_type="SEQ_CLS", **settings.rankdyna)
    else:
        config = None
        if settings.budget is not None:
            check_budget(settings.budget, "budget")
    if settings.finetuned_model is not None and (config is not None or settings.budget is None):
        raise ValueError("`finetuned_model` replaces the first round of the two-round baselines; "
                         "use it with method 'svd' or 'fwsvd' and a budget.")
    for folder in (settings.model, settings.finetuned_model):
        if folder is not None:
            require_model_folder(folder)
    return config


def score_on_dev(trainer: Trainer, dev: GlueDataset, task: GlueTask) -> dict[str, Any]:
    """The task's dev metrics of the trained model, its step count, and the check that it did not collapse."""
    output = trainer.predict(dev, metric_key_prefix="eval")
    metrics = {name: output.metrics[f"eval_{name}"] for name in task.metric_names}
    collapse = check_collapse(output.predictions, output.label_ids, metrics,
                              lambda predictions, labels: compute_metrics(task, predictions, labels),
                              task.is_regression).to_dict()
    if collapse["collapsed"]:
        warnings.warn(f"rankdyna compress: {collapse['message']}", stacklevel=2)
    return {"metrics": metrics, "train_steps": trainer.state.global_step, "collapse": collapse}


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


def training_arguments(settings: CompressSettings) -> TrainingArguments:
    """The Trainer's arguments for a job: the same for every method, so their comparison is fair."""
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


def save_rankdyna(model: Any, callback: RankDynaCallback, settings: CompressSettings) -> tuple[Any, dict]:
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
        allocated = sum(matrix_cost(layer.rank, layer.out_features, layer.in_features) for layer in layers)
        rounding = {"rank_multiple": settings.rankdyna["rank_multiple"], "target_params_before_rounding": allocated}
    return model.merge_and_unload(), rounding


def save_finetuned(model: torch.nn.Module, tokenizer: Any, settings: CompressSettings) -> str:
    """Save the dense fine-tuned model with its tokenizer: round 1 that the two-round baselines can reuse."""
    finetuned_dir = os.path.join(settings.output_dir, FINETUNED_DIR)

    def write(folder: str) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    atomic_write_dir(finetuned_dir, write)
    return finetuned_dir


def save_compact(compact: torch.nn.Module, tokenizer: Any, settings: CompressSettings,
                 extra_files: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Save the compact model (with ``extra_files`` written into its folder), its report and rank heat map;
    return its accounting for the results."""
    compact_dir = os.path.join(settings.output_dir, "compact")
    compact.save_pretrained(compact_dir, tokenizer=tokenizer, extra_files=extra_files)
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


def format_results(results: dict[str, Any]) -> str:
    """A short plain-text summary of :func:`peft_rankdyna.pipeline.compress`'s results."""
    settings = results["settings"]
    names = {"rankdyna": "RankDyna", "svd": "SVD + fine-tuning", "fwsvd": "FWSVD + fine-tuning"}
    method = "dense fine-tuning" if settings["budget"] is None else (
        f"{names[settings.get('method', 'rankdyna')]}, budget {settings['budget']:g}")
    data = settings.get("validation_texts") or settings.get("texts") or settings.get("validation_file") or settings["task"]
    lines = [f"{data} dev ({method}, {results['train_steps']} steps):"]
    lines += [f"  {name:<22}{value:.4f}" for name, value in results["metrics"].items()]
    if results.get("collapse", {}).get("collapsed"):
        lines.append(f"  WARNING: {results['collapse']['message']}. These numbers are not a result; see the "
                     "README's section on collapsed runs.")
    if "target_params_before" in results:
        before, after = results["target_params_before"], results["target_params_after"]
        lines.append(f"  {'target-matrix params':<22}{before:,} -> {after:,} ({after / before:.1%})")
    before, after = results["model_params_before"], results["model_params_after"]
    lines.append(f"  {'model params':<22}{before:,} -> {after:,} ({after / before:.1%})")
    if "rank_multiple" in results:
        lines.append(f"  {'rank rounding':<22}multiples of {results['rank_multiple']}: target params "
                     f"{results['target_params_before_rounding']:,} allocated -> {results['target_params_after']:,}")
    if "compact_dir" in results:
        lines.append(f"  {'compact model':<22}{results['compact_dir']} ({results['file_size_bytes'] / 2**20:.1f} MiB, "
                     f"{results['flops_ratio']:.3f} of dense FLOPs/token)")
    if "finetuned_dir" in results:
        lines.append(f"  {'fine-tuned model':<22}{results['finetuned_dir']}")
    if settings.get("finetuned_model"):
        lines.append(f"  {'first round':<22}reused from {settings['finetuned_model']} (not in the wall time)")
    lines.append(f"  {'wall time':<22}{results['wall_time_s']:.1f} s")
    return "\n".join(lines)
