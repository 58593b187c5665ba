"""Default target modules per ``model_type``: Q, K, V, attention output, FFN in and out of every layer.

Regexes (PEFT full-matches a string ``target_modules``) anchored on the encoder's layer list, so
that look-alikes outside the encoder (the pooler's ``dense``, a head's ``out_proj``) never match.
"""

from __future__ import annotations

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
