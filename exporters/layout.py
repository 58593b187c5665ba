"""What an export folder holds: the graph files, their descriptions, the report.

Kept free of torch and transformers so benchmark workers start fast.
"""

from __future__ import annotations

import json
import os
from typing import Any

PORTABLE, FUSED, FUSED_ORT, FP16, INT8 = "portable", "fused", "fused_ort", "fp16", "int8"
FILE_NAMES = {PORTABLE: "model.onnx", FUSED: "model_fused.onnx", FUSED_ORT: "model_fused_ort.onnx",
              FP16: "model_fused_fp16.onnx", INT8: "model_fused_int8.onnx"}
# A causal LM's folder (``rankdyna export --task text-generation-with-past``): the graph Optimum's
# ORTModelForCausalLM loads by default, and its int8 form (file_name="model_int8.onnx").
DECODER_FILE_NAMES = {PORTABLE: "model.onnx", INT8: "model_int8.onnx"}
DESCRIPTIONS = {
    PORTABLE: "Optimum's export of the compact model as it is (standard ONNX ops only)",
    FUSED: "one MultiHeadAttention op per layer fed by the low-rank projections, Q/K/V input projections "
           "merged into one MatMul",
    FUSED_ORT: "the fused graph plus onnxruntime's SkipLayerNorm and BiasGelu fusions",
    FP16: "the fused graph with onnxruntime's fusions in half precision (fp32 inputs/outputs, LayerNorm in fp32)",
    INT8: "the fused graph dynamically quantized for CPUs (int8 weights, uint8 activations per batch)",
    "int8_decoder": "the graph with its KV cache, weights stored in 8 bits for CPUs (MatMulNBits, fp32 activations)",
}
REPORT_NAME = "rankdyna_export.json"


def read_export_report(export_dir: str) -> dict[str, Any]:
    """The ``rankdyna_export.json`` of an export folder."""
    path = os.path.join(export_dir, REPORT_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No {REPORT_NAME} in {export_dir}: not a folder written by `rankdyna export`.")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
