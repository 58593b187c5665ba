"""The half-precision GPU graph: fp16 weights and activations, fp32 inputs/outputs, LayerNorm in fp32.

Softmax runs inside the fused attention op, whose kernels accumulate in fp32; LayerNorm (plain and
skip) is kept in fp32 by blocking it from the conversion. The converted graph is accepted only when
it predicts the same class as the fp32 graph on at least :data:`MIN_AGREEMENT` of the examples.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

KEEP_FP32 = ["LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization", "Softmax"]
MIN_AGREEMENT = 0.995


def convert_to_fp16(source: str, target: str) -> None:
    """Write the fp16 form of the ONNX graph ``source`` to ``target`` (fp32 inputs and outputs kept)."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(source))
    model.convert_float_to_float16(keep_io_types=True, op_block_list=KEEP_FP32)
    model.save_model_to_file(target)


def agreement(fp16_session: Any, fp32_session: Any, batches: Iterable[dict[str, np.ndarray]]) -> dict[str, Any]:
    """How often the fp16 graph's first output picks the fp32 graph's class, and the largest |difference|.

    ``agreement`` is ``None`` when the output has no classes (regression, or hidden states).
    """
    same, total, worst, has_classes = 0, 0, 0.0, True
    for feeds in batches:
        half = fp16_session.run(None, feeds)[0].astype(np.float32)
        full = fp32_session.run(None, feeds)[0]
        worst = max(worst, float(np.abs(half - full).max()))
        has_classes = has_classes and full.ndim == 2 and full.shape[-1] > 1
        same += int((half.argmax(-1) == full.argmax(-1)).sum()) if has_classes else 0
        total += full.shape[0]
    return {"examples": total, "agreement": same / total if has_classes and total else None, "max_abs_diff": worst}
