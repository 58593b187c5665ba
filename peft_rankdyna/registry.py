"""The one place that teaches PEFT and transformers about RankDyna.

PEFT 0.21's ``register_peft_method`` only accepts names already in its ``PeftType`` enum, and
``PeftType`` has no RankDyna member. We add the member to the enum the way ``enum`` itself
builds members, then register config and tuner. Everything version-specific stays in this file.

transformers' Auto classes learn to load compact folders (through :class:`AutoCompactModel`).
Optimum's exporter learns the compact model type from ``rankdyna_exporters`` (its ONNX config lives
with the exporter, as Optimum's own do): the exporters depend on this package, not the reverse.
"""

from __future__ import annotations

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
                        "AutoModelForMaskedLM", "AutoModelForQuestionAnswering", "AutoModelForMultipleChoice",
                        "AutoModelForCausalLM")


def register_compact_model() -> None:
    """Teach transformers' Auto classes, and Optimum's exporter when installed, the compact model type."""
    import transformers

    from .compact import COMPACT_MODEL_TYPE, CompactConfig, auto_class_loader

    transformers.AutoConfig.register(COMPACT_MODEL_TYPE, CompactConfig, exist_ok=True)
    for name in COMPACT_AUTO_CLASSES:
        auto_class = getattr(transformers, name)
        auto_class.register(CompactConfig, auto_class_loader(auto_class), exist_ok=True)
