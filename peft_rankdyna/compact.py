"""The compact model: truncated factors in a plain transformers model; saving and loading it.

A merged target matrix keeps only its active singular groups, with the singular values folded
into the factors, in the cheapest of three forms:

- ``LowRankLinear``: ``in → r`` (no bias) then ``r → out`` (the original bias), when r·(in+out) < in·out
  (:mod:`peft_rankdyna.budget` counts every matrix this way);
- ``nn.Linear``: one dense layer rebuilt from the factors, when factoring saves nothing;
- ``BiasOnly``: rank 0, the layer's output is its bias.

The model stays an instance of its transformers class (``isinstance(model, BertForSequenceClassification)``
holds, so ``forward`` and its signature are the original). Its class is swapped for a subclass
that adds :class:`CompactModelMixin`, whose ``save_pretrained`` writes a folder that plain
transformers refuses to load rather than silently rebuilding a dense model with random weights:
its Auto classes stop on the unknown ``model_type``, whose text says to import ``peft_rankdyna``
and use :class:`AutoCompactModel`; its model classes find no ``model.safetensors``. Load it with
:meth:`AutoCompactModel.from_pretrained` (or, once ``peft_rankdyna`` is imported, transformers' Auto classes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, Optional, Union

import torch
import transformers
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .budget import break_even_rank, matrix_cost
from .io import atomic_write_dir

# transformers quotes an unknown model_type in its error, so this one tells the reader what to do.
COMPACT_MODEL_TYPE = "rankdyna_compact (import peft_rankdyna and load with peft_rankdyna.AutoCompactModel)"
COMPACT_FORMAT_VERSION = 1
# Optimum's exporter picks a model's ONNX config by ``config.export_model_type`` when it is set.
COMPACT_EXPORT_TYPE = "rankdyna-compact"
# Not transformers' file name: a plain `BertFor...from_pretrained(dir)` must find no weights rather
# than build a dense model and initialise the factored matrices randomly.
WEIGHTS_NAME = "model.rankdyna.safetensors"
CONFIG_NAME = "config.json"


class LowRankLinear(nn.Module):
    """``x ↦ up(down(x))``: an ``in → rank → out`` factorisation of a Linear."""

    def __init__(self, in_features: int, rank: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.rank, self.out_features = in_features, rank, out_features
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


class BiasOnly(nn.Module):
    """A Linear whose rank fell to 0: its output is the bias (zeros without one)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.rank, self.out_features = in_features, 0, out_features
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zeros = x[..., :1] * 0  # keeps dtype, device and batch shape, and stays traceable
        return zeros.expand(*x.shape[:-1], self.out_features) + (0 if self.bias is None else self.bias)


def truncated_form(rank: int, in_features: int, out_features: int) -> str:
    """Which module a matrix of this rank merges into: ``"bias_only"``, ``"factored"`` or ``"dense"``
    (dense from the rank at which factoring no longer saves parameters, as ``budget`` counts them)."""
    if rank == 0:
        return "bias_only"
    return "dense" if rank >= break_even_rank(out_features, in_features) else "factored"


def empty_truncated_module(rank: int, in_features: int, out_features: int, bias: bool) -> nn.Module:
    """The (uninitialised) module of :func:`truncated_form` for this rank and shape."""
    form = truncated_form(rank, in_features, out_features)
    if form == "bias_only":
        return BiasOnly(in_features, out_features, bias)
    if form == "factored":
        return LowRankLinear(in_features, rank, out_features, bias)
    return nn.Linear(in_features, out_features, bias=bias)


@torch.no_grad()
def truncate(
    U: torch.Tensor, s: torch.Tensor, Vt: torch.Tensor, keep: torch.Tensor, bias: Optional[torch.Tensor]
) -> nn.Module:
    """The truncated module computing ``x ↦ x (U_k diag(s_k) Vt_k)ᵀ + bias`` over the kept groups ``k``."""
    U, s, Vt = U[:, keep], s[keep], Vt[keep]
    module = empty_truncated_module(int(keep.sum()), Vt.shape[1], U.shape[0], bias is not None)
    if isinstance(module, LowRankLinear):
        module.down.weight.copy_(s[:, None] * Vt)
        module.up.weight.copy_(U)
    elif isinstance(module, nn.Linear):
        module.weight.copy_((U * s) @ Vt)
    bias_param = module.up.bias if isinstance(module, LowRankLinear) else module.bias
    if bias is not None:
        bias_param.copy_(bias)
    return module.to(device=U.device, dtype=U.dtype)


class CompactModelMixin:
    """Adds RankDyna's compact save format to a transformers model with truncated target matrices."""

    @property
    def rankdyna_ranks(self) -> dict[str, int]:
        """Kept rank of every target matrix, by module name."""
        return dict(self.config.rankdyna["ranks"])

    def save_pretrained(self, save_directory: Union[str, os.PathLike], tokenizer: Any = None,
                        extra_files: Optional[Callable[[str], None]] = None, **_: Any) -> None:
        """Write weights (safetensors), config and, if given, the tokenizer, atomically into ``save_directory``.

        ``extra_files(folder)`` writes further files into the folder before it is renamed into place (the
        pooling description of a sentence-embedding model, say). A model over the budget recorded at
        merge time is refused before anything is written."""
        check_within_budget(self)
        config = self.config.to_dict()
        config["rankdyna"] = {**config["rankdyna"], "base_model_type": config["model_type"]}
        config["model_type"] = COMPACT_MODEL_TYPE  # plain transformers must refuse this folder
        config["architectures"] = [_base_class(type(self)).__name__]
        state = _state_without_tied_copies(self)

        def write(folder: str) -> None:
            save_file(state, os.path.join(folder, WEIGHTS_NAME), metadata={"format": "pt"})
            with open(os.path.join(folder, CONFIG_NAME), "w", encoding="utf-8") as handle:
                json.dump(config, handle, indent=2, sort_keys=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(folder)
            if extra_files is not None:
                extra_files(folder)

        atomic_write_dir(os.fspath(save_directory), write)


def _state_without_tied_copies(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict, less the tied weights that are the same tensor as another entry (an LM head tied to the
    input embeddings): safetensors stores no shared tensors, and loading ties them again."""
    state = model.state_dict()
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    owners = {state[name].data_ptr() for name in state if name not in tied}
    return {name: tensor.contiguous() for name, tensor in state.items()
            if not (name in tied and tensor.data_ptr() in owners)}


def _base_class(cls: type) -> type:
    return next(base for base in cls.__mro__[1:] if base is not CompactModelMixin and issubclass(base, nn.Module))


_COMPACT_CLASSES: dict[type, type] = {}


def compact_class(base_cls: type) -> type:
    """``base_cls`` with :class:`CompactModelMixin` mixed in (one class per base, created once).

    It keeps the base class's name and module: Optimum infers the library and the task of a model
    from exactly those, so a compact model exports like the transformers model it is.
    """
    if base_cls not in _COMPACT_CLASSES:
        names = {"__module__": base_cls.__module__, "__qualname__": base_cls.__qualname__}
        _COMPACT_CLASSES[base_cls] = type(base_cls.__name__, (CompactModelMixin, base_cls), names)
    return _COMPACT_CLASSES[base_cls]


def is_transformers_model(model: nn.Module) -> bool:
    """Whether ``model`` carries a transformers config (the compact save format needs one)."""
    return isinstance(getattr(model, "config", None), transformers.PretrainedConfig)


def make_compact(model: nn.Module, ranks: dict[str, int], target_params: Optional[int] = None) -> nn.Module:
    """Mark a merged transformers model as compact: record the ranks (and the parameter budget they were
    allocated under, checked at every save) and add the compact save format."""
    if not is_transformers_model(model):
        raise TypeError(f"The compact format records its ranks in a transformers config; {type(model).__name__} "
                        "has none. A plain nn.Module keeps its truncated layers but has no compact save format.")
    info: dict[str, Any] = {"format_version": COMPACT_FORMAT_VERSION, "ranks": dict(sorted(ranks.items()))}
    if target_params is not None:
        info["target_params"] = int(target_params)
    model.config.rankdyna = info
    model.config.export_model_type = COMPACT_EXPORT_TYPE
    model.__class__ = compact_class(type(model))
    return model


def check_within_budget(model: nn.Module) -> None:
    """Refuse a compact model whose target matrices hold more parameters than the budget it recorded."""
    info = model.config.rankdyna
    if info.get("target_params") is None:
        return
    kept = sum(matrix_cost(rank, *_shape(model.get_submodule(name))) for name, rank in info["ranks"].items())
    if kept > info["target_params"]:
        raise ValueError(f"This compact model's target matrices hold {kept:,} parameters, over the budget of "
                         f"{info['target_params']:,} they were allocated under; it is not the model that was "
                         "compressed. Merge it again from the trained RankDyna model.")


def _shape(module: nn.Module) -> tuple[int, int]:
    return module.out_features, module.in_features


class AutoCompactModel:
    """Loads a compact folder written by ``save_pretrained`` of a merged RankDyna model.

    Example:
        ```py
        >>> import peft_rankdyna
        >>> model = peft_rankdyna.AutoCompactModel.from_pretrained("out/mrpc-0.5/compact")
        ```
    """

    @staticmethod
    def from_pretrained(directory: Union[str, os.PathLike], torch_dtype: Optional[torch.dtype] = None) -> nn.Module:
        """Rebuild the architecture with the recorded ranks and load the weights, checking every tensor."""
        directory = os.fspath(directory)
        config_dict = _read_compact_config(directory)
        info = config_dict.pop("rankdyna")
        config_dict["model_type"] = info["base_model_type"]
        architecture = config_dict["architectures"][0]
        base_cls = getattr(transformers, architecture, None)
        if base_cls is None:
            raise ValueError(f"{directory}: architecture {architecture!r} is not a transformers class.")
        config = transformers.AutoConfig.for_model(**config_dict)
        config._name_or_path = directory  # as transformers records it: where the model (and its tokenizer) came from
        model = base_cls(config)
        for name, rank in info["ranks"].items():
            linear = model.get_submodule(name)
            parent_name, _, child = name.rpartition(".")
            module = empty_truncated_module(rank, linear.in_features, linear.out_features, linear.bias is not None)
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module)
        # strict=False: a tied LM head is not stored (checked in _load_checked_weights) and is tied below.
        model.load_state_dict(_load_checked_weights(directory, model), assign=True, strict=False)
        model = make_compact(model, info["ranks"], info.get("target_params")).eval()
        model.tie_weights()
        return model.to(torch_dtype) if torch_dtype is not None else model


def _read_compact_config(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No {CONFIG_NAME} in {directory}: not a saved compact model folder.")
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    if config.get("model_type") != COMPACT_MODEL_TYPE or "rankdyna" not in config:
        raise ValueError(
            f"{directory} holds a {config.get('model_type')!r} model, not a RankDyna compact model; "
            "load it with transformers' Auto classes."
        )
    version = config["rankdyna"].get("format_version")
    if not isinstance(version, int) or version > COMPACT_FORMAT_VERSION:
        raise ValueError(
            f"{directory} was written in compact format version {version}; this peft-rankdyna reads up to "
            f"{COMPACT_FORMAT_VERSION}. Upgrade peft-rankdyna."
        )
    return config


def _load_checked_weights(directory: str, model: nn.Module) -> dict[str, torch.Tensor]:
    path = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No {WEIGHTS_NAME} in {directory}.")
    try:
        weights = load_file(path)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is unreadable or truncated ({error}).") from None
    for name, expected in model.state_dict().items():
        if name not in weights:
            if _is_tied(model, name):
                continue
            raise ValueError(f"{path}: tensor {name!r} is missing; the weights do not match the recorded ranks.")
        if weights[name].shape != expected.shape:
            raise ValueError(
                f"{path}: tensor {name!r} has shape {tuple(weights[name].shape)} but the recorded ranks give "
                f"{tuple(expected.shape)}; the weights do not match the recorded ranks."
            )
    unexpected = sorted(set(weights) - set(model.state_dict()))
    if unexpected:
        raise ValueError(f"{path}: unexpected tensor {unexpected[0]!r}; the weights do not match the recorded ranks.")
    return weights


def _is_tied(model: nn.Module, name: str) -> bool:
    return name in (getattr(model, "_tied_weights_keys", None) or [])


class CompactConfig(transformers.PretrainedConfig):
    """What transformers' ``AutoConfig`` reads from a compact folder once ``peft_rankdyna`` is imported.

    It only routes the folder to :class:`AutoCompactModel` (through the Auto model classes); the
    loaded model carries its base model's own config (``BertConfig``, ...).
    """

    model_type = COMPACT_MODEL_TYPE


def auto_class_loader(auto_class: type) -> type:
    """The class that ``auto_class.from_pretrained`` dispatches a compact folder to.

    It loads the folder with :class:`AutoCompactModel` and returns the model if it is what
    ``auto_class`` builds (``AutoModel`` on a model with a head gets its encoder, as in transformers).
    """

    def from_pretrained(cls: type, directory: Union[str, os.PathLike], *_: Any, torch_dtype: Any = None,
                        dtype: Any = None, **__: Any) -> nn.Module:
        model = AutoCompactModel.from_pretrained(directory, torch_dtype=_dtype(dtype or torch_dtype))
        expected = auto_class._model_mapping[type(model.config)]
        if isinstance(model, expected):
            return model
        if auto_class is transformers.AutoModel and isinstance(model.base_model, expected):
            prefix = model.base_model_prefix + "."
            ranks = {name.removeprefix(prefix): rank for name, rank in model.rankdyna_ranks.items()
                     if name.startswith(prefix)}
            return make_compact(model.base_model, ranks)  # the encoder saves in the compact format too
        raise ValueError(f"{directory} holds a compact {model.config.architectures[0]}; "
                         f"{auto_class.__name__} builds a {expected.__name__}.")

    return type(f"Compact{auto_class.__name__}", (), {"config_class": CompactConfig,
                                                       "from_pretrained": classmethod(from_pretrained)})


def _dtype(value: Any) -> Optional[torch.dtype]:
    return getattr(torch, value) if isinstance(value, str) and value != "auto" else (
        value if isinstance(value, torch.dtype) else None)
