"""Default target modules per ``model_type``: Q, K, V, attention output, FFN in and out of every layer.

Regexes (PEFT full-matches a string ``target_modules``) anchored on the encoder's layer list, so
that look-alikes outside the encoder (the pooler's ``dense``, a head's ``out_proj``) never match.
"""

from __future__ import annotations

import re
from typing import Optional

from torch import nn

_BERT_LIKE = (
    r".*encoder\.layer\.\d+\."
    r"(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"
)

TRANSFORMERS_MODELS_TO_RANKDYNA_TARGET_MODULES_MAPPING: dict[str, str] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "camembert": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "distilbert": r".*transformer\.layer\.\d+\.(attention\.(q_lin|k_lin|v_lin|out_lin)|ffn\.(lin1|lin2))",
    "mpnet": r".*encoder\.layer\.\d+\.(attention\.attn\.(q|k|v|o)|intermediate\.dense|output\.dense)",
}

_LAYER_INDEX = re.compile(r"^(?:.*\.)?(?:layers?|blocks?|h)\.(\d+)\.(.+)$")
_KIND_NAMES = {
    "attention.self.query": "Q", "attention.self.key": "K", "attention.self.value": "V",
    "attention.output.dense": "attn out", "intermediate.dense": "FFN in", "output.dense": "FFN out",
    "attention.q_lin": "Q", "attention.k_lin": "K", "attention.v_lin": "V", "attention.out_lin": "attn out",
    "ffn.lin1": "FFN in", "ffn.lin2": "FFN out",
    "attention.attn.q": "Q", "attention.attn.k": "K", "attention.attn.v": "V", "attention.attn.o": "attn out",
}
KIND_ORDER = ("Q", "K", "V", "attn out", "FFN in", "FFN out")


def split_matrix_name(name: str) -> tuple[Optional[int], str]:
    """``(layer index, matrix kind)`` of a target module name, e.g. ``(3, "FFN in")``.

    Names outside a numbered layer list give ``(None, name)``; unknown kinds keep their own name.
    """
    match = _LAYER_INDEX.match(name)
    if not match:
        return None, name
    return int(match.group(1)), _KIND_NAMES.get(match.group(2), match.group(2))


def default_target_names(model: nn.Module) -> list[str]:
    """Names of the modules the default targets of ``model``'s ``model_type`` select (none if unknown)."""
    pattern = TRANSFORMERS_MODELS_TO_RANKDYNA_TARGET_MODULES_MAPPING.get(getattr(model.config, "model_type", ""))
    if pattern is None:
        return []
    return [name for name, _ in model.named_modules() if re.fullmatch(pattern, name)]
