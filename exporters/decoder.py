"""Export a compact causal LM with its KV cache: Optimum's ``text-generation-with-past`` graph, validated, optionally int8.

The graph is Optimum's own decoder layout (inputs ``input_ids``, ``attention_mask``, ``position_ids``,
``past_key_values.{i}.key/value``; outputs ``logits``, ``present.{i}.key/value``), so
``optimum.onnxruntime.ORTModelForCausalLM`` loads the folder and generates with the cache. A graph is
kept only when it computes what the PyTorch model computes on real text, in the two phases of
generation: a prefill with an empty cache, then a decoding step fed the cache the prefill wrote.
Logits and present keys/values at real (unpadded) positions must match within :data:`DECODER_ATOL`;
one batch is left-padded, as batched generation pads. The int8 graph's check is a prefill. The int8 graph stores 8-bit weights (see
:func:`quantize_weights` for why not the encoders' dynamic int8) and must pick the fp32 graph's next
token at :data:`MIN_TOKEN_AGREEMENT` of the real positions of the same text.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional, Sequence

import numpy as np
import torch

from peft_rankdyna.accounting import flop_counts
from peft_rankdyna.io import atomic_write_dir

from .layout import DECODER_FILE_NAMES, DESCRIPTIONS, INT8, PORTABLE, REPORT_NAME
from .runtime import CPU, create_session
from .validation import SENTENCE_PAIRS, ExportValidationError

logger = logging.getLogger("rankdyna_exporters")

DECODER_TASK = "text-generation-with-past"
# Largest |ONNX − PyTorch| on logits and cached keys/values of an fp32 decoder graph. Looser than the
# encoders' 1e-4: logits are unnormalised scores over the vocabulary (magnitudes ~10–30 on SmolLM2),
# and 30 layers of fp32 rounding in two orders of evaluation reach a few 1e-4 there.
DECODER_ATOL = 1e-3
# Share of real token positions at which the int8 graph's most likely next token is the fp32 graph's.
# Measured on SmolLM2-135M: dense 95%, a compact model at budget 0.6 86% (its flatter distributions have
# more near-ties); a graph computing something else agrees at about 1/vocabulary.
MIN_TOKEN_AGREEMENT = 0.80
INT8_BLOCK_SIZE = 32
# (batch, tokens, left padding of the first row): a single prompt, and a padded batch.
DECODER_SHAPES = ((1, 16, 0), (3, 24, 5))


def export_causal_lm(model: torch.nn.Module, tokenizer: Any, output: str, opset: Optional[int] = None,
                     int8: bool = False, min_agreement: float = MIN_TOKEN_AGREEMENT) -> dict[str, Any]:
    """Export ``model`` (a compact or dense transformers causal LM) to ``output`` with its KV cache; returns the
    report written to ``rankdyna_export.json``. ``int8`` adds the graph with 8-bit weights
    (:func:`quantize_weights`), kept when it picks the fp32 graph's next token at ``min_agreement`` of the
    real positions checked."""
    from optimum.exporters.onnx import onnx_export_from_model

    model = model.eval()
    report: dict[str, Any] = {"task": DECODER_TASK, "atol": DECODER_ATOL, "flops": flop_counts(model),
                              "variants": {}, "pooling": None}

    def write(folder: str) -> None:
        # Validation is ours (real text, both phases, an error instead of a warning).
        onnx_export_from_model(model, folder, task=DECODER_TASK, opset=opset, do_validation=False)
        tokenizer.save_pretrained(folder)
        path = os.path.join(folder, DECODER_FILE_NAMES[PORTABLE])
        differences = _kept_or_removed(path, lambda: validate_decoder(create_session(path, CPU), model, tokenizer))
        report["variants"][PORTABLE] = {"file": DECODER_FILE_NAMES[PORTABLE], "description": DESCRIPTIONS[PORTABLE],
                                        "max_abs_diff": differences}
        if int8:
            report["variants"][INT8] = _int8_variant(folder, tokenizer, min_agreement)
        with open(os.path.join(folder, REPORT_NAME), "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)

    atomic_write_dir(os.fspath(output), write)
    return report


def _kept_or_removed(path: str, check: Any) -> Any:
    """``check()``'s result; a graph that fails its check is removed before the error goes on."""
    try:
        return check()
    except ExportValidationError:
        os.remove(path)
        raise


# ----------------------------------------------------------------------------- inputs of both phases
def validation_tokens(tokenizer: Any, count: int) -> np.ndarray:
    """``count`` token ids of real English text (the validation sentences, repeated as needed)."""
    text = " ".join(f"{a} {b}" for a, b in SENTENCE_PAIRS)
    ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
    return np.resize(ids, count)


def prefill_inputs(tokenizer: Any, batch_size: int, length: int, left_padding: int = 0) -> dict[str, np.ndarray]:
    """Rows of real text (each from a different offset); the first row left-padded by ``left_padding`` tokens."""
    ids = validation_tokens(tokenizer, batch_size * length + length).reshape(-1, length)[:batch_size].copy()
    mask = np.ones_like(ids)
    mask[0, :left_padding] = 0
    ids[0, :left_padding] = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions(mask)}


def positions(mask: np.ndarray) -> np.ndarray:
    """Position ids as Optimum's ``ORTModelForCausalLM`` and transformers' ``generate`` make them: count the real
    tokens so far; padded slots get 1."""
    counted = np.cumsum(mask, axis=-1) - 1
    return np.where(mask == 0, 1, counted).astype(np.int64)


def decode_inputs(prefill: dict[str, np.ndarray], next_tokens: np.ndarray) -> dict[str, np.ndarray]:
    """One generated token per row after ``prefill``: its id, the mask grown by one, its position."""
    mask = np.concatenate([prefill["attention_mask"], np.ones_like(next_tokens[:, None])], axis=1)
    return {"input_ids": next_tokens[:, None].astype(np.int64), "attention_mask": mask,
            "position_ids": positions(mask)[:, -1:]}


def empty_cache(session: Any, batch_size: int) -> dict[str, np.ndarray]:
    """Zero-length past key/values of the graph's shape (batch, kv heads, 0, head size)."""
    feeds = {}
    for graph_input in session.get_inputs():
        if graph_input.name.startswith("past_key_values."):
            _, heads, _, size = graph_input.shape
            feeds[graph_input.name] = np.zeros((batch_size, heads, 0, size), dtype=np.float32)
    return feeds


def cache_feeds(output_names: Sequence[str], outputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """A run's ``present.{i}.key/value`` outputs as the next run's ``past_key_values.{i}.key/value`` inputs."""
    return {name.replace("present.", "past_key_values.", 1): value for name, value in zip(output_names, outputs)
            if name.startswith("present.")}


# ----------------------------------------------------------------------------- validation against PyTorch
@torch.no_grad()
def torch_step(model: torch.nn.Module, feeds: dict[str, np.ndarray], cache: Any = None) -> tuple[dict[str, np.ndarray],
                                                                                                 Any]:
    """The PyTorch model on one phase's inputs: its outputs under the graph's names, and its cache."""
    out = model(**{name: torch.from_numpy(feeds[name]) for name in ("input_ids", "attention_mask", "position_ids")},
                past_key_values=cache, use_cache=True)
    named = {"logits": out.logits.float().numpy()}
    for index, layer in enumerate(out.past_key_values.layers):
        named[f"present.{index}.key"] = layer.keys.float().numpy()
        named[f"present.{index}.value"] = layer.values.float().numpy()
    return named, out.past_key_values


def _differences(got: dict[str, np.ndarray], want: dict[str, np.ndarray], mask: np.ndarray,
                 worst: dict[str, float], where: str) -> None:
    """Fold the largest |difference| per output into ``worst``, over real tokens only (padded rows attend to
    nothing, and what they compute is not used)."""
    for name, expected in want.items():
        actual = got[name]
        if actual.shape != expected.shape:
            raise ExportValidationError(f"Output {name!r} has shape {actual.shape}, the model gives {expected.shape} "
                                        f"({where}).")
        # logits: (batch, tokens, vocab), the last `tokens` of the mask; caches: (batch, heads, all tokens, size).
        real = mask[:, -actual.shape[1]:, None] if name == "logits" else mask[:, None, :, None]
        difference = np.where(real.astype(bool), np.abs(actual - expected), 0.0)
        worst[name] = max(worst.get(name, 0.0), float(np.nan_to_num(difference, nan=np.inf).max()))


def max_decoder_differences(session: Any, model: torch.nn.Module, tokenizer: Any,
                            shapes: Sequence[tuple[int, int, int]] = DECODER_SHAPES) -> dict[str, float]:
    """Largest |ONNX − PyTorch| per output over a prefill and one decoding step at every shape."""
    output_names = [o.name for o in session.get_outputs()]
    worst: dict[str, float] = {}
    for batch_size, length, padding in shapes:
        where = f"batch {batch_size}, {length} tokens"
        prefill = prefill_inputs(tokenizer, batch_size, length, padding)
        want, cache = torch_step(model, prefill)
        got = dict(zip(output_names, session.run(None, {**prefill, **empty_cache(session, batch_size)})))
        _differences(got, want, prefill["attention_mask"], worst, f"prefill, {where}")
        step = decode_inputs(prefill, want["logits"][:, -1].argmax(-1))
        want, _ = torch_step(model, step, cache)
        got = dict(zip(output_names, session.run(None, {**step, **cache_feeds(output_names, list(got.values()))})))
        _differences(got, want, step["attention_mask"], worst, f"decoding step, {where}")
    return worst


def validate_decoder(session: Any, model: torch.nn.Module, tokenizer: Any, atol: float = DECODER_ATOL
                     ) -> dict[str, float]:
    """:func:`max_decoder_differences`, its largest per kind (logits, cached keys, cached values), raising
    :class:`ExportValidationError` when one exceeds ``atol``."""
    worst = max_decoder_differences(session, model, tokenizer)
    for name, difference in worst.items():
        if not difference <= atol:
            raise ExportValidationError(
                f"text-generation-with-past: output {name!r} differs from PyTorch by up to {difference:.3g} "
                f"(tolerance {atol:g}) on real text (prefill and one decoding step); the export was not written.")
    kinds = {"logits": "logits", "key": "present keys", "value": "present values"}
    return {label: max(v for n, v in worst.items() if n.endswith(suffix)) for suffix, label in kinds.items()}


# ----------------------------------------------------------------------------- the int8 graph
def quantize_weights(source: str, target: str, block_size: int = INT8_BLOCK_SIZE) -> dict[str, Any]:
    """Write ``source`` with every constant-weight MatMul stored as 8-bit weights (onnxruntime's MatMulNBits,
    symmetric, one scale per ``block_size`` inputs of an output column); returns the settings.

    Weight-only, unlike the encoders' dynamic int8: a decoder's activations have outlier channels that one
    uint8 range per tensor cannot hold. On SmolLM2-135M dynamic int8 picked the fp32 graph's next token at
    51% of real positions (38% for a compact model at 0.6), weight-only 8-bit at 95% (86%).
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quiet = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # it logs a line per node
    try:
        # accuracy_level 4: the CPU kernel multiplies in int8 (activations quantized per block as it goes).
        quantizer = MatMulNBitsQuantizer(onnx.load(source), bits=8, block_size=block_size, is_symmetric=True,
                                         accuracy_level=4)
        quantizer.process()
        quantizer.model.save_model_to_file(target, use_external_data_format=False)
    finally:
        quiet.setLevel(level)
    return {"api": "onnxruntime.quantization.MatMulNBitsQuantizer (weight-only)", "source": os.path.basename(source),
            "weights": f"int8, symmetric, one scale per block of {block_size} inputs", "activations": "fp32",
            "accuracy_level": 4}


def token_agreement(candidate: Any, reference: Any, tokenizer: Any, batch_size: int = 4, length: int = 64
                    ) -> dict[str, Any]:
    """How often ``candidate`` predicts ``reference``'s next token on real text (prefill of ``batch_size`` rows of
    ``length`` tokens, every position), the Pearson correlation of their logits, and the largest difference."""
    feeds = {**prefill_inputs(tokenizer, batch_size, length), **empty_cache(reference, batch_size)}
    low = candidate.run(["logits"], feeds)[0].astype(np.float32)
    full = reference.run(["logits"], feeds)[0].astype(np.float32)
    same = low.argmax(-1) == full.argmax(-1)
    return {"positions": int(same.size), "agreement": float(same.mean()),
            "correlation": float(np.corrcoef(low.ravel(), full.ravel())[0, 1]),
            "max_abs_diff": float(np.abs(low - full).max())}


def _int8_variant(folder: str, tokenizer: Any, min_agreement: float) -> dict[str, Any]:
    """Write the int8 graph and keep it only if it picks the fp32 graph's next token often enough."""
    source, path = (os.path.join(folder, DECODER_FILE_NAMES[name]) for name in (PORTABLE, INT8))
    settings = quantize_weights(source, path)
    result = token_agreement(create_session(path, CPU), create_session(source, CPU), tokenizer)

    def check() -> None:
        if not result["agreement"] >= min_agreement:
            raise ExportValidationError(
                f"int8: picks the fp32 graph's next token at only {result['agreement']:.2%} of {result['positions']} "
                f"real positions (need {min_agreement:.0%}); the export was not written.")

    _kept_or_removed(path, check)
    logger.info("rankdyna export: int8 graph picks the fp32 graph's next token at %.2f%% of %d positions "
                "(logits correlation %.4f)", 100 * result["agreement"], result["positions"], result["correlation"])
    return {"file": DECODER_FILE_NAMES[INT8], "description": DESCRIPTIONS["int8_decoder"],
            "against_fp32": {**result, "min_agreement": min_agreement}, "settings": settings,
            "file_size_bytes": os.path.getsize(path)}
