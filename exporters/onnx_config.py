"""The compact model's ONNX config, registered with Optimum's ``TasksManager`` (as Optimum's own configs are).

A compact model is its base transformers model (BERT, RoBERTa, MPNet, DistilBERT, ...) with some
Linears replaced by two smaller ones, so its ONNX inputs and outputs are the base model's: the
compact type gets one ONNX config constructor per task that builds the base type's own Optimum
config and tightens its validation tolerance to :data:`VALIDATION_ATOL`. It is registered under two
names: ``rankdyna-compact``, the ``export_model_type`` a compact model in memory carries
(``onnx_export_from_model``), and the ``model_type`` written in a compact folder's ``config.json``
(``main_export`` reads it first). ``import rankdyna_exporters`` registers it.
"""

from __future__ import annotations

from typing import Any

from peft_rankdyna.compact import COMPACT_EXPORT_TYPE, COMPACT_MODEL_TYPE

# Largest |ONNX − PyTorch| output difference an fp32 graph may show on real text.
VALIDATION_ATOL = 1e-4
ENCODER_TASKS = ("feature-extraction", "fill-mask", "text-classification", "token-classification",
                 "multiple-choice", "question-answering")
# A compact decoder exports with its KV cache (past key/values in, present key/values out), as Optimum's own.
DECODER_TASKS = ("text-generation", "text-generation-with-past")
TASKS = ENCODER_TASKS + DECODER_TASKS


def compact_onnx_config(config: Any, task: str = "feature-extraction", use_past: bool = False, **kwargs: Any) -> Any:
    """The Optimum ONNX config of a compact model: its base model type's config for ``task`` (with the KV cache
    when ``use_past``: Optimum calls a ``*-with-past`` task's constructor with the plain task and ``use_past``)."""
    from optimum.exporters.tasks import TasksManager

    base_type = config.model_type
    supported = TasksManager.get_supported_tasks_for_model_type(base_type, "onnx", library_name="transformers")
    task = f"{task}-with-past" if use_past else task
    if task not in supported:
        raise ValueError(f"Optimum cannot export a {base_type} model for {task!r}; it supports "
                         f"{', '.join(sorted(supported))}.")
    onnx_config = supported[task](config, **kwargs)
    onnx_config.ATOL_FOR_VALIDATION = VALIDATION_ATOL
    return onnx_config


compact_onnx_config.SUPPORTS_PAST = True  # what Optimum's registry asks of a config that takes *-with-past tasks


def register_onnx_config() -> None:
    """Register the compact type with Optimum's ``TasksManager`` (idempotent)."""
    from optimum.exporters.tasks import TasksManager

    register = TasksManager.create_register("onnx", overwrite_existing=True)
    for model_type in (COMPACT_EXPORT_TYPE, COMPACT_MODEL_TYPE):
        register(model_type, *TASKS)(compact_onnx_config)
