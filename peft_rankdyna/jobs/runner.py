"""The one job runner: settings → objective → model → train → merge → save → score what was saved.

``compress(settings)`` runs every method the same way for every objective (:mod:`.objectives`):

- dense (``budget=None``): fine-tune the model; it is saved as ``finetuned/``, the first round the
  two-round baselines can reuse;
- ``rankdyna``: one round in which RankDyna prunes the target matrices to the budget; the adapter
  and the allocation history are saved, then the merged compact model;
- ``svd`` / ``fwsvd`` / ``asvd`` / ``svdllm``: the two-round baselines — the objective's first round
  (dense fine-tuning, where it has one), truncation at one uniform rank (FWSVD weights the rows by
  Fisher importance gathered over the training set; ASVD scales and SVD-LLM whitens the inputs seen
  on ``calibration_samples`` training examples, the first batches the Trainer draws), then a
  second round on the factors.

The metrics and the collapse check in ``results.json`` are always those of the model as saved
(after any rank rounding of the merge), never of the model before it. A one-round job writes
crash-safe checkpoints when ``save_steps`` asks for them, and ``resume`` continues it from the last
(:mod:`.checkpoints`).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from dataclasses import asdict
from typing import Any, Optional, Sequence

import torch
from peft import get_peft_model
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from ..accounting import model_parameters
from ..baselines import factor_model, fisher_row_importance, input_statistics, input_transforms
from ..budget import check_budget, matrix_cost
from ..config import RankDynaConfig
from ..io import atomic_write_text
from ..loading import load_tokenizer, require_model_folder
from ..targets import default_target_names
from ..trainer import CrashSafeTrainer, RankDynaTrainer
from .checkpoints import checkpoint_step, prepare_checkpoints, remove_checkpoints, resume_point
from .length import with_default_length
from .objectives import Objective, get_objective
from .progress import ProgressScores
from .saving import draw_curve, draw_history, draw_ranks, save_compact, save_finetuned, save_training_record, write_report
from .settings import CompressSettings


def compress(settings: CompressSettings, callbacks: Sequence[TrainerCallback] = ()) -> dict[str, Any]:
    """Train (and, with a budget, compress) ``settings.model`` for ``settings.objective``; returns the results.

    Writes ``results.json``, the compact model, its report and pictures (and, for RankDyna, the
    adapter and ``rankdyna_history.json``) into ``settings.output_dir``. ``callbacks`` are added to
    every Trainer the job builds (after RankDyna's own). With ``settings.eval_steps`` the model being
    trained is scored as it trains: ``results["curve"]`` and ``curve.png``.
    """
    start = time.perf_counter()
    set_seed(settings.seed)
    objective_class = get_objective(settings.objective)
    settings = with_default_length(settings, objective_class.first_round)
    objective = objective_class(settings)
    config = checked_config(settings, objective)  # cheap checks first, then the data: all before any model is loaded
    prepare_checkpoints(settings, objective, config)
    objective.read_data()
    tokenizer = load_tokenizer(settings.model, settings.gguf_file)
    objective.prepare(tokenizer)
    model = objective.load_model(settings.finetuned_model or settings.model)
    progress = ProgressScores(objective, settings.eval_steps) if settings.eval_steps else None
    callbacks = (*callbacks, progress) if progress else tuple(callbacks)
    results: dict[str, Any] = {"settings": asdict(settings), "device": training_device(),
                               "model_params_before": model_parameters(model), **objective.describe(),
                               "resumed_from_step": checkpoint_step(resume_point(settings))}
    if settings.budget is None:
        trainer = train(objective, model, callbacks)
        saved = model
        results["finetuned_dir"] = save_finetuned(model, tokenizer, settings.output_dir)
        results["model_params_after"] = results["model_params_before"]
    else:
        if config is not None:
            saved, trainer = train_rankdyna(objective, model, config, callbacks, results)
        else:
            saved, trainer = train_two_rounds(objective, model, callbacks)
        compact_dir = save_compact(saved, tokenizer, settings.output_dir, objective.extra_files)
        results.update(write_report(saved, compact_dir, settings.output_dir, settings.max_seq_length))
        draw_ranks(saved, settings.output_dir)
    results["train_steps"] = trainer.state.global_step
    if progress is not None:
        results["curve"] = progress.points
        draw_curve(progress.points, settings.output_dir)
    results.update(asdict(objective.score(saved)))
    results["wall_time_s"] = time.perf_counter() - start
    atomic_write_text(os.path.join(settings.output_dir, "results.json"), json.dumps(results, indent=2))
    remove_checkpoints(settings.output_dir)
    return results


def train_rankdyna(objective: Objective, model: nn.Module, config: RankDynaConfig,
                   callbacks: Sequence[TrainerCallback], results: dict[str, Any]) -> tuple[nn.Module, Trainer]:
    """One RankDyna round; saves the adapter and history, records any rank rounding; returns the merged model."""
    output_dir = objective.settings.output_dir
    whitening = None
    if objective.settings.init_basis == "whitened":  # calibrated on the base model, before it is wrapped
        whitening = calibrated_transforms(objective, model, train(objective, model, run=False), "svdllm")
    model = get_peft_model(model, config)
    if whitening is not None:
        model.base_model.rebase_factors(whitening)
    settings = objective.settings
    trainer = train(objective, model, callbacks, RankDynaTrainer, final_lr_restart=settings.final_lr_restart,
                    self_distill_weight=settings.self_distill_weight)
    save_training_record(model, trainer.rankdyna_callback, output_dir)
    draw_history(trainer.rankdyna_callback, model.base_model.dense_params(), output_dir)
    if config.rank_multiple:
        layers = model.base_model.rankdyna_layers().values()
        allocated = sum(matrix_cost(layer.rank, layer.out_features, layer.in_features) for layer in layers)
        results.update(rank_multiple=config.rank_multiple, target_params_before_rounding=allocated)
    return model.merge_and_unload(), trainer


def train_two_rounds(objective: Objective, model: nn.Module,
                     callbacks: Sequence[TrainerCallback]) -> tuple[nn.Module, Trainer]:
    """The SVD-family baselines: the objective's first round (unless reused), truncation, the second round."""
    settings = objective.settings
    first = train(objective, model, callbacks, run=objective.first_round and settings.finetuned_model is None)
    names, importance, transform = default_target_names(model), None, None
    if settings.method == "fwsvd":
        importance = fisher_row_importance(model, first.get_train_dataloader(), names)
    elif settings.method in ("asvd", "svdllm"):
        transform = calibrated_transforms(objective, model, first, settings.method)
    compact = factor_model(model, settings.budget, row_importance=importance, input_transform=transform)
    return compact, train(objective, compact, callbacks)


def calibrated_transforms(objective: Objective, model: nn.Module, trainer: Trainer,
                          method: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """ASVD's scaling or SVD-LLM's whitening (``method``) of every target's inputs, per module name, from the
    first batches ``trainer`` draws (``calibration_samples`` examples)."""
    batches = itertools.islice(trainer.get_train_dataloader(), calibration_batches(objective.settings))
    targets = {name: model.get_submodule(name) for name in default_target_names(model)}
    stats = input_statistics(objective.training_model(model), targets, batches, gram=method == "svdllm")
    return input_transforms(stats, method)


def calibration_batches(settings: CompressSettings) -> int:
    """Training batches holding ``calibration_samples`` examples (the activation-aware calibration)."""
    return max(1, math.ceil(settings.calibration_samples / settings.batch_size))


def train(objective: Objective, model: nn.Module, callbacks: Sequence[TrainerCallback] = (),
          trainer_cls: type = CrashSafeTrainer, run: bool = True, **trainer_options: Any) -> Trainer:
    """A Trainer of ``trainer_cls`` (with ``trainer_options``) on the objective's data and ``model`` (trained
    unless ``run`` is False; from the job's last checkpoint with ``resume``, which only one-round jobs allow)."""
    trainer = trainer_cls(model=objective.training_model(model), args=training_arguments(objective.settings),
                          train_dataset=objective.train_dataset, data_collator=objective.collator,
                          callbacks=list(callbacks), **trainer_options)
    if run:
        trainer.train(resume_from_checkpoint=resume_point(objective.settings))
    return trainer


def checked_config(settings: CompressSettings, objective: Objective) -> Optional[RankDynaConfig]:
    """Check objective, method, budget and first-round settings before any slow work; RankDyna's config, if any."""
    objective.check()
    config = None
    if settings.budget is not None and settings.method == "rankdyna":
        config = RankDynaConfig(target_budget=settings.budget, task_type=objective.task_type, **settings.rankdyna)
    elif settings.budget is not None:
        check_budget(settings.budget, "budget")
    if settings.finetuned_model is not None and (config is not None or settings.budget is None):
        raise ValueError("`finetuned_model` replaces the first round of the two-round baselines; "
                         "use it with a baseline method (svd, fwsvd, asvd, svdllm) and a budget.")
    for folder in (settings.model, settings.finetuned_model):
        if folder is not None:
            require_model_folder(folder)
    return config


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
        save_strategy="steps" if settings.save_steps else "no",
        save_steps=settings.save_steps or 500,  # 500: transformers' default, unused without save_steps
        save_total_limit=settings.save_total_limit,
        eval_strategy="no",
        logging_steps=50,
        report_to=[],
        disable_tqdm=not settings.show_progress,
        use_cpu=not torch.cuda.is_available(),
    )
