"""The int8 CPU graph: onnxruntime's dynamic quantization of the fused graph, through Optimum's ORTQuantizer.

Dynamic quantization needs no calibration data: weights are quantized once (signed 8-bit, symmetric,
per output channel by default), activations per batch at run time (unsigned 8-bit), and the MatMuls
become MatMulInteger. The fused attention op (MultiHeadAttention) has no quantized kernel and stays
in fp32, fed by quantized projections. With ``embeddings=True`` the embedding tables (Gather) are
stored in 8 bits too, which is where most of a small encoder's file size is. The quantized graph is
accepted only when it follows the fp32 graph on real text (:data:`MIN_AGREEMENT`,
:data:`MIN_CORRELATION`; :func:`rankdyna_exporters.validation.agreement`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import Any

MIN_AGREEMENT = 0.99  # share of examples whose class is the fp32 graph's (classifiers)
# Pearson of all output values against the fp32 graph's, for outputs without classes (hidden states,
# embeddings, regression scores). Lower than fp16's: on MiniLM-L6 at budget 0.5 the int8 hidden states
# correlate 0.972 with fp32 per channel, 0.956 per tensor, while a graph computing something else is near 0.
MIN_CORRELATION = 0.95


@dataclass(frozen=True)
class Int8Options:
    """What the int8 graph quantizes.

    ``embeddings``: also store the embedding tables (Gather) in 8 bits: about 4× smaller embeddings,
    dequantized on lookup. ``per_channel``: one weight scale per output channel (more accurate for
    low-rank factors, whose columns differ in scale) instead of one per tensor.
    """

    embeddings: bool = True
    per_channel: bool = True

    @property
    def operators(self) -> list[str]:
        """The ONNX op types handed to the quantizer."""
        return ["MatMul", "Gather"] if self.embeddings else ["MatMul"]


def quantize(folder: str, source_name: str, target_name: str, options: Int8Options) -> dict[str, Any]:
    """Write the dynamically quantized form of ``folder/source_name`` to ``folder/target_name``; returns the settings.

    ``folder`` must be an export folder (Optimum's ORTQuantizer reads its ``config.json``).
    """
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    # The avx512_vnni preset is u8 activations × s8 weights, onnxruntime's default for dynamic quantization
    # on x86 and ARM alike; the operators are ours, not the preset's list (which also names Transpose).
    config = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=options.per_channel,
                                                operators_to_quantize=options.operators)
    quantizer = ORTQuantizer.from_pretrained(folder, file_name=source_name)
    with tempfile.TemporaryDirectory() as scratch:
        written = quantizer.quantize(config, save_dir=scratch, file_suffix="int8")
        shutil.move(os.path.join(written, f"{os.path.splitext(source_name)[0]}_int8.onnx"),
                    os.path.join(folder, target_name))
    return {"api": "optimum.onnxruntime.ORTQuantizer (dynamic)", "source": source_name, **asdict(options),
            "operators": options.operators, "weights": "int8, symmetric", "activations": "uint8, per batch"}
