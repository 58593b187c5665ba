"""The half-precision GPU graph: fp16 weights and activations, fp32 inputs/outputs, LayerNorm in fp32.

Softmax runs inside the fused attention op, whose kernels accumulate in fp32; LayerNorm (plain and
skip) is kept in fp32 by blocking it from the conversion. The converted graph is accepted only when
it predicts the same class as the fp32 graph on at least :data:`MIN_AGREEMENT` of the examples
(:func:`rankdyna_exporters.validation.agreement`).
"""

from __future__ import annotations

KEEP_FP32 = ["LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization", "Softmax"]
MIN_AGREEMENT = 0.995  # share of examples whose class is the fp32 graph's (classifiers)
MIN_CORRELATION = 0.999  # Pearson of all output values against the fp32 graph's (outputs without classes)


def convert_to_fp16(source: str, target: str) -> None:
    """Write the fp16 form of the ONNX graph ``source`` to ``target`` (fp32 inputs and outputs kept)."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(source))
    model.convert_float_to_float16(keep_io_types=True, op_block_list=KEEP_FP32)
    model.save_model_to_file(target)
