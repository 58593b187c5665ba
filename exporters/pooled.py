"""Sentence embeddings inside the graph: pooling (and normalisation) appended to a feature-extraction export.

Optimum exports a compact encoder for ``feature-extraction`` with the token states
(``last_hidden_state``) as its output. A sentence-embedding model's user wants what
sentence-transformers computes: the pooled, possibly normalised, embedding. :func:`add_pooling`
appends those few ops to any graph of an export folder (portable, fused, with onnxruntime's fusions)
as a second output, ``sentence_embedding`` (the name Optimum gives it for sentence-transformers
models), so a deployed graph needs no code around it; :class:`PooledReference` is the PyTorch
pipeline the export is validated against.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peft_rankdyna.pooling import Pooling, pool

HIDDEN, MASK, EMBEDDING = "last_hidden_state", "attention_mask", "sentence_embedding"


class PooledReference(nn.Module):
    """The PyTorch pipeline of a sentence-embedding model: the encoder's token states and their pooling."""

    def __init__(self, encoder: nn.Module, pooling: Pooling) -> None:
        super().__init__()
        self.encoder, self.pooling = encoder, pooling
        self.config = encoder.config

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.encoder(**inputs).last_hidden_state
        return {HIDDEN: hidden, EMBEDDING: pool(hidden, inputs[MASK], self.pooling)}


def add_pooling(path: str, pooling: Pooling) -> None:
    """Append ``pooling`` to the feature-extraction graph at ``path`` as the output ``sentence_embedding``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(path)
    graph = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if HIDDEN not in [o.name for o in graph.output] or MASK not in [i.name for i in graph.input]:
        raise ValueError(f"{path}: pooling needs a {HIDDEN!r} output and an {MASK!r} input (a feature-extraction "
                         "export of an encoder).")

    def constant(name: str, value: Any, dtype: Any = "float32") -> str:
        import numpy as np

        graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=dtype), name=f"rankdyna_pool_{name}"))
        return f"rankdyna_pool_{name}"

    def node(op: str, inputs: list[str], name: str, **attributes: Any) -> str:
        output = f"rankdyna_pool_{name}"
        graph.node.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def reduce(op: str, data: str, axis: int, name: str) -> str:
        # ReduceSum takes its axes as an input from opset 13, the other reductions from opset 18.
        if op == "ReduceSum" and opset >= 13 or opset >= 18:
            return node(op, [data, constant(f"axes_{name}", [axis], "int64")], name, keepdims=0)
        return node(op, [data], name, axes=[axis], keepdims=0)

    mask = node("Unsqueeze", [node("Cast", [MASK], "mask_float", to=TensorProto.FLOAT),
                              constant("last_axis", [-1], "int64")], "mask")
    if pooling.mode == "mean":
        summed = reduce("ReduceSum", node("Mul", [HIDDEN, mask], "masked"), 1, "sum")
        count = node("Max", [reduce("ReduceSum", mask, 1, "count"), constant("min_count", 1e-9)], "count_clipped")
        embedding = node("Div", [summed, count], "mean")
    elif pooling.mode == "cls":
        embedding = node("Gather", [HIDDEN, constant("first", 0, "int64")], "cls", axis=1)
    else:
        padding = node("Mul", [node("Sub", [constant("one", 1.0), mask], "padding"), constant("lowest", -3.4e38)],
                       "padding_low")
        embedding = reduce("ReduceMax", node("Add", [HIDDEN, padding], "shifted"), 1, "max")
    if pooling.normalize:
        norm = node("ReduceL2", [embedding], "norm", axes=[-1], keepdims=1) if opset < 18 else node(
            "ReduceL2", [embedding, constant("norm_axes", [-1], "int64")], "norm", keepdims=1)
        embedding = node("Div", [embedding, node("Max", [norm, constant("eps", 1e-12)], "norm_clipped")], "normalized")
    graph.node.append(helper.make_node("Identity", [embedding], [EMBEDDING], name="rankdyna_pool_output"))
    hidden_size = next(o for o in graph.output if o.name == HIDDEN).type.tensor_type.shape.dim[2]
    output = helper.make_tensor_value_info(EMBEDDING, TensorProto.FLOAT, ["batch_size", hidden_size.dim_value or None])
    graph.output.append(output)
    onnx.checker.check_model(model)
    onnx.save(model, path)
