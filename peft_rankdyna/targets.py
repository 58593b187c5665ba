"""Default target modules per ``model_type``: the attention and FFN projections of every layer.

Encoders: Q, K, V, attention output, FFN in and out. Decoders of the Llama family (Llama, Mistral,
Qwen2/3): q/k/v/o and the gated FFN's gate, up and down projections (grouped-query attention makes
k and v narrower than q; each matrix is factored at its own shape). Phi-3 fuses q/k/v into one
``qkv_proj`` and gate/up into ``gate_up_proj``: plain Linears, factored as they are. GPT-2's layers
are transformers ``Conv1D`` modules (weight stored in × out): its default targets name them, so that
the layer check refuses them with a clear error instead of PEFT's "target modules not found".

Regexes (PEFT full-matches a string ``target_modules``) anchored on the layer list, so that
look-alikes outside it (the pooler's ``dense``, a head's ``out_proj``, the LM head) never match.
"""

from __future__ import annotations

import re
from typing import Optional

from torch import nn

_BERT_LIKE = (
    r".*encoder\.layer\.\d+\."
    r"(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"
)

_LLAMA_LIKE = r".*layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"

TRANSFORMERS_MODELS_TO_RANKDYNA_TARGET_MODULES_MAPPING: dict[str, str] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "camembert": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "distilbert": r".*transformer\.layer\.\d+\.(attention\.(q_lin|k_lin|v_lin|out_lin)|ffn\.(lin1|lin2))",
    "mpnet": r".*encoder\.layer\.\d+\.(attention\.attn\.(q|k|v|o)|intermediate\.dense|output\.dense)",
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "phi3": r".*layers\.\d+\.(self_attn\.(qkv_proj|o_proj)|mlp\.(gate_up_proj|down_proj))",
    "gpt2": r".*h\.\d+\.(attn\.(c_attn|c_proj)|mlp\.(c_fc|c_proj))",
}

_LAYER_INDEX = re.compile(r"^(?:.*\.)?(?:layers?|blocks?|h)\.(\d+)\.(.+)$")
_KIND_NAMES = {
    "attention.self.query": "Q", "attention.self.key": "K", "attention.self.value": "V",
    "attention.output.dense": "attn out", "intermediate.dense": "FFN in", "output.dense": "FFN out",
    "attention.q_lin": "Q", "attention.k_lin": "K", "attention.v_lin": "V", "attention.out_lin": "attn out",
    "ffn.lin1": "FFN in", "ffn.lin2": "FFN out",
    "attention.attn.q": "Q", "attention.attn.k": "K", "attention.attn.v": "V", "attention.attn.o": "attn out",
    "self_attn.q_proj": "Q", "self_attn.k_proj": "K", "self_attn.v_proj": "V", "self_attn.o_proj": "attn out",
    "self_attn.qkv_proj": "QKV", "mlp.gate_proj": "FFN gate", "mlp.up_proj": "FFN in", "mlp.gate_up_proj": "FFN gate+in",
    "mlp.down_proj": "FFN out",
}
KIND_ORDER = ("Q", "K", "V", "QKV", "attn out", "FFN gate", "FFN in", "FFN gate+in", "FFN out")


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
