"""Export-time attention modules that give ONNX Runtime one fused attention op per layer.

ONNX Runtime's transformer optimizer recognises attention only when Q, K and V are single MatMuls
on the LayerNorm output; a factored projection (two MatMuls) hides the pattern, and MPNet's
relative-position bias hides it even on a dense model. Instead of matching patterns after export,
these modules replace each self-attention core before export: its ONNX form is one
``com.microsoft::MultiHeadAttention`` node fed by the (low-rank) projections, with

- one merged input projection: the down-projections of factored Q/K/V and the weights of dense ones
  all read the same hidden states, so they become one wide MatMul, then a Split;
- the Q/K/V biases folded into the attention op, and the padding mask (plus MPNet's position bias)
  passed as its additive ``attention_bias``.

In PyTorch the modules compute the same attention with ``scaled_dot_product_attention``, so a
fused model can be validated against the compact model it came from.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from torch import nn

from peft_rankdyna.compact import BiasOnly, LowRankLinear

MHA_OP = "com.microsoft::MultiHeadAttention"


class _MultiHeadAttention(torch.autograd.Function):
    """Attention over ``(B, S, H)`` projections; exported as one ORT MultiHeadAttention node.

    Padding comes either as ``key_padding_mask`` (``(B, L)`` int32, 1 = attend) or folded into the
    additive ``attention_bias`` (``(B, 1|N, S, L)``); the other is ``None``.
    """

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor], attention_bias: Optional[torch.Tensor],
                num_heads: int) -> torch.Tensor:
        hidden = query.shape[-1]
        q, k, v = (x + b for x, b in zip((query, key, value), bias.split(hidden)))
        heads = [x.unflatten(-1, (num_heads, hidden // num_heads)).transpose(1, 2) for x in (q, k, v)]
        mask = attention_bias if key_padding_mask is None else key_padding_mask[:, None, None, :].bool()
        context = nn.functional.scaled_dot_product_attention(*heads, attn_mask=mask)
        return context.transpose(1, 2).flatten(2)

    @staticmethod
    def symbolic(g: Any, query: Any, key: Any, value: Any, bias: Any, key_padding_mask: Any, attention_bias: Any,
                 num_heads: int) -> Any:
        from torch.onnx.symbolic_helper import _is_none, _optional_input_placeholder_tensor

        optional = [_optional_input_placeholder_tensor(g) if _is_none(x) else x
                    for x in (key_padding_mask, attention_bias)]
        return g.op(MHA_OP, query, key, value, bias, *optional, num_heads_i=num_heads)


def key_padding_mask(mask: Optional[torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
    """Any padding-mask form the encoders pass (``(B, L)`` 0/1, 4-D bool, 4-D additive) as ``(B, L)`` int32."""
    if mask is None:
        return hidden.new_ones(hidden.shape[:2], dtype=torch.int32)
    if mask.dim() == 4:  # padding masks repeat over heads and query positions
        mask = mask[:, 0, 0, :]
        mask = mask if mask.dtype == torch.bool else mask == 0
    return mask.to(torch.int32)


def additive_bias(mask: Optional[torch.Tensor], hidden: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Any padding-mask form as a ``(B, 1, S, L)`` additive bias (0 = attend, dtype minimum = masked)."""
    keep = key_padding_mask(mask, hidden).bool()[:, None, None, :]
    length = hidden.shape[1]
    return ((~keep).to(dtype) * torch.finfo(dtype).min).expand(hidden.shape[0], 1, length, length)


class FusedQKVAttention(nn.Module):
    """Q, K and V projections of one layer plus attention, in the form that exports to one fused op.

    ``first`` is the merged input projection (rows: dense Q/K/V weights or down-projections of factored
    ones, in Q, K, V order); ``ups`` holds the up-projection of each factored one (none for dense).
    """

    def __init__(self, query: nn.Module, key: nn.Module, value: nn.Module, num_heads: int) -> None:
        super().__init__()
        projections = (query, key, value)
        self.num_heads, self.hidden = num_heads, query.out_features
        first_rows, self.widths, ups, biases = [], [], nn.ModuleList(), []
        for projection in projections:
            weight, up, bias = _first_stage(projection)
            first_rows.append(weight)
            self.widths.append(weight.shape[0])
            ups.append(up)
            biases.append(bias if bias is not None else torch.zeros(projection.out_features))
        self.first = nn.Linear(query.in_features, sum(self.widths), bias=False)
        with torch.no_grad():
            self.first.weight.copy_(torch.cat(first_rows))
        self.ups = ups
        self.register_buffer("bias", torch.cat(biases).detach().clone())

    def forward(self, hidden_states: torch.Tensor, padding: Optional[torch.Tensor],
                position_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attention of ``hidden_states``; ``padding`` in any encoder mask form, MPNet's position bias added."""
        parts = self.first(hidden_states).split(self.widths, dim=-1)
        q, k, v = (self._project(part, width, up, hidden_states)
                   for part, width, up in zip(parts, self.widths, self.ups))
        if position_bias is None:
            mask, bias = key_padding_mask(padding, hidden_states), None
        else:
            mask, bias = None, additive_bias(padding, hidden_states, q.dtype) + position_bias.to(q.dtype)
        return _MultiHeadAttention.apply(q, k, v, self.bias.to(q.dtype), mask, bias, self.num_heads)

    def _project(self, part: torch.Tensor, width: int, up: Optional[nn.Module],
                 hidden_states: torch.Tensor) -> torch.Tensor:
        if up is not None:
            return up(part)
        if width == 0:  # rank 0: the output is the bias alone, added inside the attention op
            return hidden_states.new_zeros(*hidden_states.shape[:-1], self.hidden)
        return part


def _first_stage(projection: nn.Module) -> tuple[torch.Tensor, Optional[nn.Module], Optional[torch.Tensor]]:
    """(rows of the merged input projection, bias-free up-projection or None, bias) of one projection."""
    if isinstance(projection, LowRankLinear):
        up = nn.Linear(projection.rank, projection.out_features, bias=False)
        with torch.no_grad():
            up.weight.copy_(projection.up.weight)
        return projection.down.weight.detach(), up, _detached(projection.up.bias)
    if isinstance(projection, BiasOnly):
        return torch.zeros(0, projection.in_features), None, _detached(projection.bias)
    if isinstance(projection, nn.Linear):
        return projection.weight.detach(), None, _detached(projection.bias)
    raise TypeError(f"Cannot fuse a {type(projection).__name__} projection into the attention op.")


def _detached(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if tensor is None else tensor.detach()


class BertStyleSelfAttention(nn.Module):
    """Drop-in for BERT/RoBERTa/XLM-R/CamemBERT/ELECTRA ``*SelfAttention`` (``query``/``key``/``value``)."""

    def __init__(self, core: nn.Module) -> None:
        super().__init__()
        self.fused = FusedQKVAttention(core.query, core.key, core.value, core.num_attention_heads)

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        _refuse_extras(args, kwargs)
        return self.fused(hidden_states, attention_mask), None


class DistilBertStyleSelfAttention(nn.Module):
    """Drop-in for DistilBERT's ``MultiHeadSelfAttention`` (``q_lin``/``k_lin``/``v_lin``/``out_lin``)."""

    def __init__(self, core: nn.Module) -> None:
        super().__init__()
        self.fused = FusedQKVAttention(core.q_lin, core.k_lin, core.v_lin, core.n_heads)
        self.out_lin = core.out_lin

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                *args: Any, **kwargs: Any) -> tuple[torch.Tensor]:
        _refuse_extras(args, kwargs)
        return (self.out_lin(self.fused(query, mask)),)


class MPNetStyleSelfAttention(nn.Module):
    """Drop-in for ``MPNetSelfAttention`` (``q``/``k``/``v``/``o``); the relative-position bias joins the mask."""

    def __init__(self, core: nn.Module) -> None:
        super().__init__()
        self.fused = FusedQKVAttention(core.q, core.k, core.v, core.num_attention_heads)
        self.o = core.o

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                head_mask: Optional[torch.Tensor] = None, position_bias: Optional[torch.Tensor] = None,
                *args: Any, **kwargs: Any) -> tuple[torch.Tensor]:
        _refuse_extras((head_mask, *args), kwargs)
        return (self.o(self.fused(hidden_states, attention_mask, position_bias)),)


def _refuse_extras(args: tuple, kwargs: dict) -> None:
    used = [value for value in (*args, *kwargs.values()) if value is not None and value is not False]
    if used:
        raise ValueError("The fused attention export supports plain encoder self-attention only (no head_mask, "
                         "cross-attention, cache or output_attentions).")


# Children that identify each attention family, and the drop-in that replaces it.
_FAMILIES = (
    (("query", "key", "value"), BertStyleSelfAttention),
    (("q_lin", "k_lin", "v_lin", "out_lin"), DistilBertStyleSelfAttention),
    (("q", "k", "v", "o"), MPNetStyleSelfAttention),
)


def fuse_attention(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` whose self-attention cores are fused drop-ins; returns it and how many were fused.

    Raises ``ValueError`` when the model has no attention core of a known family.
    """
    fused = copy.deepcopy(model).eval()
    replacements = []
    for name, module in fused.named_modules():
        children = dict(module.named_children())
        for required, dropin in _FAMILIES:
            if all(child in children for child in required) and (dropin is not MPNetStyleSelfAttention
                                                                   or type(module).__name__.startswith("MPNet")):
                replacements.append((name, dropin(module)))
                break
    if not replacements:
        raise ValueError(f"No self-attention of a supported family (BERT, RoBERTa, ELECTRA, DistilBERT, MPNet) "
                         f"in {type(model).__name__}.")
    for name, dropin in replacements:
        parent, _, child = name.rpartition(".")
        setattr(fused.get_submodule(parent) if parent else fused, child, dropin)
    return fused, len(replacements)
