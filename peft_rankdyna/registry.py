"""The one place that teaches PEFT, transformers and Optimum about RankDyna.

PEFT 0.21's ``register_peft_method`` only accepts names already in its ``PeftType`` enum, and
``PeftType`` has no RankDyna member. We add the member to the enum the way ``enum`` itself
builds members, then register config and tuner. Everything version-specific stays in this file.

transformers' Auto classes learn to load compact folders (through :class:`AutoCompactModel`),
and, when Optimum is installed, its exporter learns the compact model type, so
``optimum.exporters.onnx.main_export`` exports one. A compact model is its base transformers model
(BERT, RoBERTa, MPNet, DistilBERT, ...) with some Linears replaced by two smaller ones, so its ONNX
inputs and outputs are the base model's: the compact type gets one ONNX config constructor per task
that builds the base type's own Optimum config and tightens its validation tolerance to
:data:`ONNX_VALIDATION_ATOL`. It is registered under two names: ``rankdyna-compact``, the
``export_model_type`` a compact model in memory carries (``onnx_export_from_model``), and the
``model_type`` written in a compact folder's ``config.json`` (``main_export`` reads it first).

Nothing here imports ``rankdyna_exporters``: the exporters depend on this package, not the reverse.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from peft.utils.peft_types import PeftType

RANKDYNA_NAME = "rankdyna"


def _add_peft_type(name: str) -> PeftType:
    """Return ``PeftType[name]``, adding the member to the enum first if PEFT does not know it."""
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = PeftType
    member.__init__(name)
    type.__setattr__(PeftType, name, member)  # EnumType.__setattr__ refuses to touch members
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    return member


RANKDYNA_PEFT_TYPE = _add_peft_type(RANKDYNA_NAME.upper())


def register_rankdyna(config_cls: type, model_cls: type) -> None:
    """Register RankDyna's config and tuner with PEFT (idempotent: importing twice is fine)."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import register_peft_method

    if RANKDYNA_PEFT_TYPE in PEFT_TYPE_TO_TUNER_MAPPING:
        return
    register_peft_method(name=RANKDYNA_NAME, config_cls=config_cls, model_cls=model_cls, prefix="rankdyna_")


# The transformers Auto classes a compact folder can be loaded through (one per exportable task).
COMPACT_AUTO_CLASSES = ("AutoModel", "AutoModelForSequenceClassification", "AutoModelForTokenClassification",
                        "AutoModelForMaskedLM", "AutoModelForQuestionAnswering", "AutoModelForMultipleChoice")


def register_compact_model() -> None:
    """Teach transformers' Auto classes, and Optimum's exporter when installed, the compact model type."""
    import transformers

    from .compact import COMPACT_MODEL_TYPE, CompactConfig, auto_class_loader

    transformers.AutoConfig.register(COMPACT_MODEL_TYPE, CompactConfig, exist_ok=True)
    for name in COMPACT_AUTO_CLASSES:
        auto_class = getattr(transformers, name)
        auto_class.register(CompactConfig, auto_class_loader(auto_class), exist_ok=True)
    if importlib.util.find_spec("optimum") is not None and importlib.util.find_spec("optimum.exporters.onnx"):
        register_onnx_config()


ONNX_VALIDATION_ATOL = 1e-4
ONNX_TASKS = ("feature-extraction", "fill-mask", "text-classification", "token-classification", "multiple-choice",
              "question-answering")


def compact_onnx_config(config: Any, task: str = "feature-extraction", **kwargs: Any) -> Any:
    """The Optimum ONNX config of a compact model: its base model type's config for ``task``."""
    from optimum.exporters.tasks import TasksManager

    base_type = config.model_type
    supported = TasksManager.get_supported_tasks_for_model_type(base_type, "onnx", library_name="transformers")
    if task not in supported:
        raise ValueError(f"Optimum cannot export a {base_type} model for {task!r}; it supports "
                         f"{', '.join(sorted(supported))}.")
    onnx_config = supported[task](config, **kwargs)
    onnx_config.ATOL_FOR_VALIDATION = ONNX_VALIDATION_ATOL
    return onnx_config


def register_onnx_config() -> None:
    """Register the compact type with Optimum's ``TasksManager`` (idempotent)."""
    from optimum.exporters.tasks import TasksManager

    from .compact import COMPACT_EXPORT_TYPE, COMPACT_MODEL_TYPE

    register = TasksManager.create_register("onnx", overwrite_existing=True)
    for model_type in (COMPACT_EXPORT_TYPE, COMPACT_MODEL_TYPE):
        register(model_type, *ONNX_TASKS)(compact_onnx_config)
