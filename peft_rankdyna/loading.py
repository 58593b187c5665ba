"""Loading saved folders: a RankDyna adapter on its base model, a compact model, a dense model, a tokenizer."""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import torch
import transformers

from .compact import COMPACT_MODEL_TYPE, CONFIG_NAME, AutoCompactModel

# PEFT's task types and the transformers Auto class that builds a model for each.
AUTO_CLASS_BY_TASK_TYPE = {
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
    "CAUSAL_LM": "AutoModelForCausalLM",
}


# Families whose position ids start after the padding index, so they have that many fewer positions.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "mpnet")


def max_positions(config: Any) -> int:
    """The longest sequence the model's position embeddings allow."""
    limit = getattr(config, "max_position_embeddings", None) or 10**9
    if config.model_type in _OFFSET_POSITIONS:
        limit -= config.pad_token_id + 1
    return limit


def require_model_folder(path: str) -> None:
    """A clear error when ``path`` is not a local folder (the Hub is not used)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Model folder not found: {path} (pass a local folder saved with save_pretrained).")


def model_location(path: str) -> tuple[str, Optional[str]]:
    """A model folder as ``(folder, None)``, or a ``.gguf`` file as ``(its folder, its file name)``: what
    transformers' ``from_pretrained(folder, gguf_file=name)`` takes."""
    if path.endswith(".gguf"):
        return os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    return path, None


def load_tokenizer(path: str, gguf_file: Optional[str] = None) -> Any:
    """The tokenizer saved beside a model (or in the GGUF file ``gguf_file`` in ``path``); none is a clear error."""
    require_model_folder(path)
    try:
        return transformers.AutoTokenizer.from_pretrained(path, **({"gguf_file": gguf_file} if gguf_file else {}))
    except (OSError, TypeError, ValueError) as error:
        raise ValueError(f"No usable tokenizer in {path} ({error}); save the tokenizer beside the model.") from None


def load_rankdyna_adapter(adapter_dir: str, base_model: Optional[str] = None) -> Any:
    """A saved RankDyna adapter on its base model (default: the base path recorded in the adapter).

    The base model is built with the Auto class of the adapter's ``task_type`` (a sequence
    classifier for ``SEQ_CLS``, the bare encoder when none is recorded).
    """
    from peft import PeftConfig, PeftModel

    config = PeftConfig.from_pretrained(adapter_dir)
    base_path = base_model or config.base_model_name_or_path
    if not base_path or not os.path.isdir(base_path):
        raise FileNotFoundError(
            f"Base model of {adapter_dir} not found at {base_path!r}; pass the local base model folder."
        )
    auto_class = getattr(transformers, AUTO_CLASS_BY_TASK_TYPE.get(str(config.task_type), "AutoModel"))
    return PeftModel.from_pretrained(auto_class.from_pretrained(base_path), adapter_dir)


def merge_adapter(adapter_dir: str, base_model: Optional[str] = None) -> torch.nn.Module:
    """The compact model of a saved RankDyna adapter (see ``RankDynaModel.merge_and_unload``)."""
    return load_rankdyna_adapter(adapter_dir, base_model).merge_and_unload()


def load_folder(directory: str) -> torch.nn.Module:
    """Any saved model folder: a RankDyna adapter (on its base), a compact model, or a dense transformers model
    (built as the architecture its config records, e.g. ``BertForSequenceClassification``; ``AutoModel`` when
    it records none)."""
    if os.path.isfile(os.path.join(directory, "adapter_config.json")):
        return load_rankdyna_adapter(directory)
    config_path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{directory} holds neither a model (config.json) nor a RankDyna adapter.")
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    if config.get("model_type") == COMPACT_MODEL_TYPE:
        return AutoCompactModel.from_pretrained(directory)
    architecture = (config.get("architectures") or [None])[0]
    model_class = getattr(transformers, architecture, None) if architecture else None
    return (model_class or transformers.AutoModel).from_pretrained(directory)
