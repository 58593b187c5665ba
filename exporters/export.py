"""Export a compact model to ONNX: the portable graph, the fused graph, optionally the fp16 GPU and int8 CPU graphs.

Every graph is validated against the PyTorch model before it is kept (see ``validation``); the
output folder is written in a staging folder and renamed into place, so a failed export leaves no
half-written folder behind. ``rankdyna_export.json`` records what was written and measured.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Callable, Iterable, NamedTuple, Optional, Union

import numpy as np
import torch

from peft_rankdyna.compact import AutoCompactModel
from peft_rankdyna.io import atomic_write_dir
from peft_rankdyna.loading import max_positions
from peft_rankdyna.pooling import Pooling, copy_pooling_files, read_pooling
from peft_rankdyna.accounting import flop_counts

from . import require_onnx_extras

require_onnx_extras()  # one clear error before the imports below need optimum

from . import fp16 as half  # noqa: E402
from . import int8 as int8_module  # noqa: E402
from .fusion import MHA_OP, fuse_attention  # noqa: E402
from .layout import DESCRIPTIONS, FILE_NAMES, FP16, FUSED, FUSED_ORT, INT8, PORTABLE, REPORT_NAME  # noqa: E402
from .decoder import DECODER_TASK, MIN_TOKEN_AGREEMENT, export_causal_lm  # noqa: E402
from .onnx_config import ENCODER_TASKS, VALIDATION_ATOL  # noqa: E402
from .pooled import EMBEDDING, PooledReference, add_pooling  # noqa: E402
from .runtime import CPU, create_session  # noqa: E402
from .validation import ExportValidationError, agreement, tokenised_inputs, validate  # noqa: E402

logger = logging.getLogger("rankdyna_exporters")


def export(source: Union[str, torch.nn.Module], output: str, task: Optional[str] = None, tokenizer: Any = None,
           fp16: bool = False, fp16_examples: Optional[Iterable[tuple[str, str]]] = None,
           opset: Optional[int] = None, pooling: Optional[Pooling] = None, int8: bool = False,
           int8_examples: Optional[Iterable[tuple[str, str]]] = None,
           int8_options: Optional[int8_module.Int8Options] = None) -> dict[str, Any]:
    """Export a compact folder (or model) to ``output``; returns the export report.

    ``task`` defaults to the one Optimum infers from the model class. ``fp16_examples`` and
    ``int8_examples`` are the text pairs (second text ``None`` for single sentences) the fp16 and
    int8 graphs are checked against the fp32 graph on (default: the built-in validation pairs);
    ``int8_options`` says what the int8 graph quantizes (default :class:`~.int8.Int8Options()`). For
    ``feature-extraction``, ``pooling`` (by default the one a sentence-transformers folder declares,
    see :func:`peft_rankdyna.pooling.read_pooling`) is appended to every graph as the output
    ``sentence_embedding`` and validated against the PyTorch encoder and pooling. A causal LM (task
    ``text-generation-with-past``, its default) is exported by :func:`.decoder.export_causal_lm`.
    """
    from optimum.exporters.tasks import TasksManager

    model, tokenizer = _load(source, tokenizer)
    task = task or _default_task(TasksManager.infer_task_from_model(model))
    if task == DECODER_TASK:
        options = int8_options or int8_module.Int8Options()
        if fp16 or pooling is not None or int8_examples is not None or options.shapes_graph:
            raise ValueError("A causal LM exports its fp32 graph and, with int8, its graph with 8-bit weights; fp16, "
                             "pooling, int8 check examples and the dynamic-int8 choices belong to encoder exports.")
        bar = MIN_TOKEN_AGREEMENT if options.min_agreement is None else options.min_agreement
        return export_causal_lm(model, tokenizer, os.fspath(output), opset, int8, bar)
    if task not in ENCODER_TASKS:
        raise ValueError(f"`rankdyna export` exports the encoder tasks ({', '.join(ENCODER_TASKS)}) and causal LMs "
                         f"with their KV cache ({DECODER_TASK}), not {task!r}.")
    if pooling is None and task == "feature-extraction" and isinstance(source, (str, os.PathLike)) and (
            os.path.isfile(os.path.join(source, "modules.json"))):
        pooling = read_pooling(os.fspath(source))
    if pooling is not None and task != "feature-extraction":
        raise ValueError(f"Pooling belongs to a feature-extraction export, not {task!r}.")
    reference = model if pooling is None else PooledReference(model, pooling)
    report: dict[str, Any] = {"task": task, "atol": VALIDATION_ATOL, "flops": flop_counts(model), "variants": {},
                              "pooling": None if pooling is None else pooling.to_dict()}

    def write(folder: str) -> None:
        _export_with_optimum(model, folder, task, opset, tokenizer)
        _pool(os.path.join(folder, FILE_NAMES[PORTABLE]), pooling, source, folder)
        _keep(folder, PORTABLE, reference, tokenizer, report)
        fused, layers = fuse_attention(model)
        with tempfile.TemporaryDirectory() as scratch:
            _export_with_optimum(fused, scratch, task, opset)
            shutil.move(os.path.join(scratch, "model.onnx"), os.path.join(folder, FILE_NAMES[FUSED]))
        _pool(os.path.join(folder, FILE_NAMES[FUSED]), pooling)
        _keep(folder, FUSED, reference, tokenizer, report, expected_attention=layers)
        _onnxruntime_fusions(os.path.join(folder, FILE_NAMES[FUSED]), os.path.join(folder, FILE_NAMES[FUSED_ORT]))
        _keep(folder, FUSED_ORT, reference, tokenizer, report, expected_attention=layers)
        seq_len = min(128, max_positions(model.config))
        if fp16:
            _keep_reduced(folder, FP16, _fp16_graph, tokenizer, fp16_examples, report, seq_len)
        if int8:
            options = int8_options or int8_module.Int8Options()
            _keep_reduced(folder, INT8, lambda path: _int8_graph(path, options), tokenizer, int8_examples, report,
                          seq_len)
        with open(os.path.join(folder, REPORT_NAME), "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)

    atomic_write_dir(os.fspath(output), write)
    return report


def _default_task(inferred: str) -> str:
    """The task Optimum infers from the model class, a causal LM's with its KV cache (what generation needs)."""
    return DECODER_TASK if inferred == "text-generation" else inferred


def _pool(path: str, pooling: Optional[Pooling], source: Any = None, folder: Optional[str] = None) -> None:
    """Append the pooling to a written graph; with ``source`` and ``folder``, also copy the pooling description."""
    if pooling is None:
        return
    add_pooling(path, pooling)
    if folder is not None and isinstance(source, (str, os.PathLike)):
        copy_pooling_files(os.fspath(source), folder)


def _load(source: Union[str, torch.nn.Module], tokenizer: Any) -> tuple[torch.nn.Module, Any]:
    if not isinstance(source, (str, os.PathLike)):
        if tokenizer is None:
            raise ValueError("Pass the tokenizer with an in-memory model; validation tokenises real text.")
        return source.eval(), tokenizer
    from transformers import AutoTokenizer

    return AutoCompactModel.from_pretrained(source).eval(), tokenizer or AutoTokenizer.from_pretrained(source)


def _export_with_optimum(model: torch.nn.Module, folder: str, task: str, opset: Optional[int],
                         tokenizer: Any = None) -> None:
    from optimum.exporters.onnx import onnx_export_from_model

    # Validation is ours: real text, a strict tolerance, and an error instead of Optimum's warning.
    onnx_export_from_model(model, folder, task=task, opset=opset, do_validation=False)
    if tokenizer is not None:  # Optimum copies files from config._name_or_path; the tokenizer in use is the one
        tokenizer.save_pretrained(folder)


def _keep(folder: str, variant: str, model: torch.nn.Module, tokenizer: Any, report: dict[str, Any],
          expected_attention: int = 0) -> None:
    """Validate one written graph and record it; a graph that fails is removed before the error is raised."""
    path = os.path.join(folder, FILE_NAMES[variant])
    ops = op_counts(path)
    try:
        if ops.get("MultiHeadAttention", 0) != expected_attention:
            raise ExportValidationError(f"{variant}: expected {expected_attention} MultiHeadAttention ops "
                                        f"({MHA_OP}), the graph has {ops.get('MultiHeadAttention', 0)}.")
        differences = validate(create_session(path, CPU), model, tokenizer, VALIDATION_ATOL, variant)
    except ExportValidationError:
        os.remove(path)
        raise
    report["variants"][variant] = {"file": FILE_NAMES[variant], "description": DESCRIPTIONS[variant],
                                   "max_abs_diff": differences, "ops": ops}
    logger.info("rankdyna export: %s graph validated (max |diff| %s)", variant,
                ", ".join(f"{name} {value:.2g}" for name, value in differences.items()))


def _onnxruntime_fusions(source: str, target: str) -> None:
    """onnxruntime's transformer fusions (SkipLayerNorm, BiasGelu, ...) on a graph whose attention is fused already."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_attention = False  # our MultiHeadAttention ops are kept as they are
    optimize_model(source, model_type="bert", num_heads=0, hidden_size=0, optimization_options=options,
                   opt_level=0, use_gpu=False).save_model_to_file(target)


# An output without classes passes when it correlates with the fp32 output, or when it is simply the same:
# a near-constant output (an untrained regressor, say) has no spread for a correlation to measure.
SAME_VALUES_ATOL = 1e-3


class ReducedGraph(NamedTuple):
    """What a reduced-precision graph was made from and the bar it must pass against that fp32 graph."""

    source: str  # the fp32 variant it was converted from
    provider: str  # where it is meant to run, so where it is checked
    min_agreement: float
    min_correlation: float
    settings: dict[str, Any]


def _fp16_graph(folder: str) -> ReducedGraph:
    """Write the fp16 graph; its fp32 source, the provider it runs on, its thresholds and settings."""
    from .runtime import choose_provider

    half.convert_to_fp16(*(os.path.join(folder, FILE_NAMES[name]) for name in (FUSED_ORT, FP16)))
    return ReducedGraph(FUSED_ORT, choose_provider(), half.MIN_AGREEMENT, half.MIN_CORRELATION,
                        {"kept_fp32": half.KEEP_FP32})


def _int8_graph(folder: str, options: int8_module.Int8Options) -> ReducedGraph:
    """Write the int8 graph (a CPU graph: onnxruntime's CUDA provider has no MatMulInteger fast path)."""
    settings = int8_module.quantize(folder, FILE_NAMES[FUSED], FILE_NAMES[INT8], options)
    return ReducedGraph(FUSED, CPU, options.agreement_bar, int8_module.MIN_CORRELATION, settings)


def _keep_reduced(folder: str, variant: str, write: Callable[[str], ReducedGraph], tokenizer: Any,
                  examples: Optional[Iterable[tuple[str, str]]], report: dict[str, Any], seq_len: int) -> None:
    """Write a reduced-precision graph with ``write(folder)`` and keep it only if it follows its fp32 graph.

    Classifiers must pick the fp32 graph's class on at least the minimum share of examples; outputs
    without classes must correlate with the fp32 outputs at least as much as the minimum correlation
    (or differ from them by at most :data:`SAME_VALUES_ATOL`). An embedding model's pooled
    ``sentence_embedding`` is the output checked when the graph has one, the first output otherwise.
    """
    source, provider, min_agreement, min_correlation, settings = write(folder)  # a ReducedGraph
    target = os.path.join(folder, FILE_NAMES[variant])
    reference = create_session(os.path.join(folder, FILE_NAMES[source]), provider)
    candidate = create_session(target, provider)
    names = [i.name for i in reference.get_inputs()]
    outputs = [o.name for o in reference.get_outputs()]
    checked = EMBEDDING if EMBEDDING in outputs else outputs[0]  # an embedding model's product, if pooled
    result = agreement(candidate, reference, list(_batches(tokenizer, examples, names, seq_len=seq_len)), checked)
    result.update(provider=provider, against=source,
                  examples_from="given examples" if examples is not None else "built-in pairs")
    problem = _shortfall(result, min_agreement, min_correlation)
    if problem is not None:
        os.remove(target)
        raise ExportValidationError(f"{variant}: {problem} of {result['examples']} examples; max |diff| "
                                    f"{result['max_abs_diff']:.3g}. The {variant} graph was not kept.")
    report["variants"][variant] = {"file": FILE_NAMES[variant], "description": DESCRIPTIONS[variant],
                                   "against_fp32": result, "settings": settings, "ops": op_counts(target),
                                   "file_size_bytes": os.path.getsize(target)}
    logger.info("rankdyna export: %s graph agrees with fp32 on %s of %d examples (correlation %.4f, max |diff| %.3g, "
                "%s)", variant, "n/a" if result["agreement"] is None else f"{result['agreement']:.2%}",
                result["examples"], result["correlation"] or float("nan"), result["max_abs_diff"], provider)


def _shortfall(result: dict[str, Any], min_agreement: float, min_correlation: float) -> Optional[str]:
    """How a reduced-precision graph's check falls short of its bar, or None when it passes."""
    if result["agreement"] is not None:
        if result["agreement"] < min_agreement:
            return f"predicts the fp32 class on only {result['agreement']:.2%} (need {min_agreement:.1%})"
        return None
    if (result["correlation"] or 0.0) >= min_correlation or result["max_abs_diff"] <= SAME_VALUES_ATOL:
        return None
    return f"correlates with the fp32 outputs at only {result['correlation']} (need {min_correlation})"


def _batches(tokenizer: Any, examples: Optional[Iterable[tuple[str, str]]], names: list[str],
             batch_size: int = 32, seq_len: int = 128) -> Iterable[dict[str, np.ndarray]]:
    if examples is None:
        yield tokenised_inputs(tokenizer, 16, seq_len, names)
        return
    pairs = list(examples)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        second = [b for _, b in chunk] if all(b is not None for _, b in chunk) else None
        encoded = tokenizer([a for a, _ in chunk], second, padding=True, truncation=True, max_length=seq_len,
                            return_tensors="np")
        yield {name: encoded[name].astype(np.int64) for name in names}


def op_counts(path: str) -> dict[str, int]:
    """How many nodes of each op type the ONNX graph at ``path`` holds (most frequent first)."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    return dict(collections.Counter(node.op_type for node in graph.node).most_common())
