"""The int8 CPU graph: onnxruntime's quantization of the fused graph, through Optimum's ORTQuantizer.

Dynamic quantization (the default) needs no calibration data: weights are quantized once (signed
8-bit, symmetric, per output channel by default), activations per batch at run time (unsigned 8-bit),
and the MatMuls become MatMulInteger. Static quantization (``Int8Options.calibration``) fixes the
activation ranges beforehand from task examples run through the fp32 graph and writes QDQ pairs that
onnxruntime fuses into QLinearMatMul; it is a measured candidate (benchmarks/int8_choices.py) that
the export does not offer: on MRPC it agreed with the fp32 graph far less than dynamic quantization
(benchmarks/results/int8_static.md). The fused attention op (MultiHeadAttention) has no quantized kernel and stays
in fp32, fed by quantized projections. With ``embeddings=True`` the embedding tables (Gather) are
stored in 8 bits too, which is where most of a small encoder's file size is. The quantized graph is
accepted only when it follows the fp32 graph on real text (``Int8Options.min_agreement``,
:data:`MIN_CORRELATION`; :func:`rankdyna_exporters.validation.agreement`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from typing import Any, Optional, Sequence

import numpy as np

# Share of examples whose class must be the fp32 graph's (classifiers). Dynamic int8 flips borderline
# predictions: on MRPC dev it kept 97.3% of a dense fine-tuned MiniLM-L6's classes and 95.1–97.1% of six
# RankDyna models' (benchmarks/results/int8_choices.md); a graph computing something else keeps ~50%.
MIN_AGREEMENT = 0.95
# Pearson of all output values against the fp32 graph's, for outputs without classes (hidden states,
# embeddings, regression scores). Lower than fp16's: on MiniLM-L6 at budget 0.5 the int8 hidden states
# correlate 0.972 with fp32 per channel, 0.956 per tensor, while a graph computing something else is near 0.
MIN_CORRELATION = 0.95
# How static quantization turns the calibration examples' activations into ranges: the observed
# extremes. onnxruntime's histogram methods (percentile, entropy) are not offered: its calibrator
# collects every tensor, including the padded attention bias (−3.4e38 at padding), and a histogram of
# that range cannot be binned ("Too many bins for data range"); unpadded examples of one length would
# avoid it only by calibrating on a biased sample.
CALIBRATION_METHODS = ("minmax",)


@dataclass(frozen=True)
class Int8Options:
    """What the int8 graph quantizes.

    ``embeddings``: also store the embedding tables (Gather) in 8 bits: about 4× smaller embeddings,
    dequantized on lookup. ``per_channel``: one weight scale per output channel (more accurate for
    low-rank factors, whose columns differ in scale) instead of one per tensor. ``min_rank``: weight
    products whose weight has a side shorter than this (the narrow factors of a low-rank matrix) stay
    in fp32; 0 quantizes them all. ``min_agreement``: the share of examples on which the int8 graph
    must predict the fp32 graph's class to be kept (``None``: :data:`MIN_AGREEMENT`; a causal LM's graph,
    which quantizes its weights only and none of the other choices here, counts next tokens against its own
    default, :data:`rankdyna_exporters.decoder.MIN_TOKEN_AGREEMENT`). ``calibration``: ``None`` for dynamic quantization,
    or one of :data:`CALIBRATION_METHODS` for static quantization from calibration examples.
    """

    embeddings: bool = True
    per_channel: bool = True
    min_rank: int = 0
    min_agreement: Optional[float] = None
    calibration: Optional[str] = None

    def __post_init__(self) -> None:
        if self.calibration is not None and self.calibration not in CALIBRATION_METHODS:
            raise ValueError(f"calibration must be None or one of {CALIBRATION_METHODS}, got {self.calibration!r}.")
        if self.min_agreement is not None and not 0.0 < self.min_agreement <= 1.0:
            raise ValueError(f"min_agreement must be in (0, 1], got {self.min_agreement}.")
        if self.min_rank < 0:
            raise ValueError(f"min_rank must be >= 0, got {self.min_rank}.")

    @property
    def agreement_bar(self) -> float:
        """The share of examples an encoder's int8 graph must agree on: ``min_agreement`` or the default."""
        return MIN_AGREEMENT if self.min_agreement is None else self.min_agreement

    @property
    def shapes_graph(self) -> bool:
        """Whether these options choose more than the defaults for what the dynamic int8 graph quantizes."""
        return replace(self, min_agreement=None) != Int8Options()

    @property
    def operators(self) -> list[str]:
        """The ONNX op types handed to the quantizer."""
        return ["MatMul", "Gather"] if self.embeddings else ["MatMul"]


def quantize(folder: str, source_name: str, target_name: str, options: Int8Options,
             calibration_examples: Optional[Sequence[dict[str, np.ndarray]]] = None) -> dict[str, Any]:
    """Write the quantized form of ``folder/source_name`` to ``folder/target_name``; returns the settings.

    ``folder`` must be an export folder (Optimum's ORTQuantizer reads its ``config.json``).
    ``calibration_examples`` (graph inputs of one example each, batch dimension 1) are needed, and
    only used, when ``options.calibration`` asks for static quantization.
    """
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    static = options.calibration is not None
    if static and not calibration_examples:
        raise ValueError(f"Static quantization ({options.calibration}) needs calibration examples; none were given.")
    # The avx512_vnni preset is u8 activations × s8 weights, onnxruntime's default on x86 and ARM alike;
    # the operators are ours, not the preset's list (which also names Transpose).
    narrow = narrow_products(os.path.join(folder, source_name), options.min_rank)
    config = AutoQuantizationConfig.avx512_vnni(is_static=static, per_channel=options.per_channel,
                                                operators_to_quantize=options.operators, nodes_to_exclude=narrow)
    quantizer = ORTQuantizer.from_pretrained(folder, file_name=source_name)
    with tempfile.TemporaryDirectory() as scratch:
        ranges = _activation_ranges(quantizer, options, calibration_examples, scratch) if static else None
        written = quantizer.quantize(config, save_dir=scratch, file_suffix="int8", calibration_tensors_range=ranges)
        shutil.move(os.path.join(written, f"{os.path.splitext(source_name)[0]}_int8.onnx"),
                    os.path.join(folder, target_name))
    activations = (f"uint8, fixed ranges ({options.calibration}, {len(calibration_examples)} examples)" if static
                   else "uint8, per batch")
    return {"api": f"optimum.onnxruntime.ORTQuantizer ({'static' if static else 'dynamic'})", "source": source_name,
            **asdict(options), "min_agreement": options.agreement_bar, "operators": options.operators, "weights": "int8, symmetric",
            "activations": activations, "products_kept_fp32": len(narrow)}


def _activation_ranges(quantizer: Any, options: Int8Options, examples: Sequence[dict[str, np.ndarray]],
                       scratch: str) -> dict[str, Any]:
    """The activation ranges static quantization fixes, from ``examples`` run through the fp32 graph.

    Optimum's ``AutoCalibrationConfig`` wants a ``datasets.Dataset`` only to copy its name into the
    config; its calibration reader just iterates, so the config is built directly and the examples go
    in as plain feeds (no ``datasets`` dependency).
    """
    from optimum.onnxruntime.configuration import CalibrationConfig, CalibrationMethod

    config = CalibrationConfig(dataset_name="calibration examples", dataset_config_name=None,
                               dataset_split=None, dataset_num_samples=len(examples), method=CalibrationMethod.MinMax)
    # Each feed keeps its batch dimension of 1: the reader adds one more when batch_size is 1.
    samples = [{name: value[0] for name, value in feeds.items()} for feeds in examples]
    return quantizer.fit(samples, config, onnx_augmented_model_name=os.path.join(scratch, "augmented.onnx"),
                         operators_to_quantize=options.operators)


def narrow_products(path: str, min_rank: int) -> list[str]:
    """Names of the MatMul nodes of the graph at ``path`` whose constant weight has a side < ``min_rank``.

    Gemm nodes (the pooler and the classifier) are not among them: the quantizer rewrites them
    under new names before it looks at exclusions, so they are quantized whatever their shape.
    """
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    return [node.name for node in graph.node if node.op_type == "MatMul" and node.input[1] in shapes
            and min(shapes[node.input[1]]) < min_rank]
