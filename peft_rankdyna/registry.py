"""The one place that teaches PEFT about RankDyna.

PEFT 0.21's ``register_peft_method`` only accepts names already in its ``PeftType`` enum, and
``PeftType`` has no RankDyna member. We add the member to the enum the way ``enum`` itself
builds members, then register config and tuner. Everything version-specific stays in this file.
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
