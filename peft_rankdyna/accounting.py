"""Accounting for any model — dense, RankDyna while training, compact: parameters, FLOPs, the rank table.

Parameters of the target matrices are counted as the final model stores them
(:func:`peft_rankdyna.budget.matrix_cost`: r·(in+out) factored, in·out dense, 0 bias-only): a
compact matrix by its actual weights, a RankDyna matrix while training by what it will merge into.
FLOPs are per token, multiply-add = 2 FLOPs: the target linear layers, and attention's QKᵀ and
AV products (4 · seq_len · hidden per layer).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Optional

from torch import nn

from .budget import matrix_cost
from .compact import WEIGHTS_NAME, BiasOnly, CompactModelMixin, LowRankLinear, truncated_form
from .model import find_rankdyna_model
from .targets import KIND_ORDER, default_target_names, split_matrix_name


@dataclass
class MatrixRow:
    """One target matrix of the rank table."""

    name: str
    layer: Optional[int]
    kind: str
    in_features: int
    out_features: int
    rank: int
    form: str
    params: int

    @property
    def kept_fraction(self) -> float:
        """Parameters kept relative to the dense matrix."""
        return self.params / (self.in_features * self.out_features)


def matrix_table(model: nn.Module) -> list[MatrixRow]:
    """The per-matrix rank table of a dense, RankDyna or compact model."""
    rankdyna = find_rankdyna_model(model)
    rows = []
    if rankdyna is not None:
        for name, layer in rankdyna.rankdyna_layers().items():
            shape = (layer.in_features, layer.out_features)
            rows.append(_row(name, *shape, layer.rank, matrix_cost(layer.rank, layer.out_features, layer.in_features)))
    elif isinstance(model, CompactModelMixin):
        for name in model.rankdyna_ranks:
            module = model.get_submodule(name)
            weights = sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))
            rows.append(_row(name, module.in_features, module.out_features, _module_rank(module), weights))
    else:
        for name in default_target_names(model):
            module = model.get_submodule(name)
            rank = min(module.in_features, module.out_features)
            rows.append(_row(name, module.in_features, module.out_features, rank, module.weight.numel()))
    return sorted(rows, key=_table_order)


def _table_order(row: MatrixRow) -> tuple:
    kind = KIND_ORDER.index(row.kind) if row.kind in KIND_ORDER else len(KIND_ORDER)
    return (row.layer if row.layer is not None else -1, kind, row.name)


def _module_rank(module: nn.Module) -> int:
    if isinstance(module, (LowRankLinear, BiasOnly)):
        return module.rank
    return min(module.in_features, module.out_features)


def _row(name: str, in_features: int, out_features: int, rank: int, params: int) -> MatrixRow:
    layer, kind = split_matrix_name(name)
    form = truncated_form(rank, in_features, out_features)
    return MatrixRow(name, layer, kind, in_features, out_features, rank, form, params)


def model_parameters(model: nn.Module) -> int:
    """Parameters of the model as it will be stored: for a RankDyna model, the compact model it merges into."""
    rankdyna = find_rankdyna_model(model)
    unique = {id(p): (n, p) for n, p in model.named_parameters()}.values()
    if rankdyna is None:
        return sum(p.numel() for _, p in unique)
    others = sum(p.numel() for n, p in unique if "rankdyna_" not in n and ".original_module." not in n)
    return others + rankdyna.kept_params()


def attention_flops_per_position(hidden_size: int, layers: int) -> int:
    """Attention FLOPs per token per key position: QKᵀ and the weighted sum of V, 2 FLOPs per MAC each."""
    return 4 * hidden_size * layers


def flop_counts(model: nn.Module, rows: Optional[list[MatrixRow]] = None) -> dict[str, int]:
    """FLOPs per token of the target linear layers (as kept, and dense) and of attention per key position."""
    rows = matrix_table(model) if rows is None else rows
    config = model.config
    return {"linear": 2 * sum(row.params for row in rows),
            "dense_linear": 2 * sum(row.in_features * row.out_features for row in rows),
            "attention_per_position": attention_flops_per_position(config.hidden_size, config.num_hidden_layers)}


def flops_ratio(counts: dict[str, int], seq_len: int) -> float:
    """Kept/dense FLOPs per token at ``seq_len`` from :func:`flop_counts` (the one definition of the ratio)."""
    attention = counts["attention_per_position"] * seq_len
    return (counts["linear"] + attention) / (counts["dense_linear"] + attention)


def model_report(model: nn.Module, seq_len: int = 128, weights_file: Optional[str] = None) -> dict[str, Any]:
    """Parameters, FLOPs per token, rank table and, given the file it was saved to, size on disk of ``model``."""
    rows = matrix_table(model)
    counts = flop_counts(model, rows)
    attention_flops = counts["attention_per_position"] * seq_len
    report = {
        "seq_len": seq_len,
        "target_params": sum(row.params for row in rows),
        "target_params_dense": sum(row.in_features * row.out_features for row in rows),
        "model_params": model_parameters(model),
        "linear_flops_per_token": counts["linear"],
        "attention_flops_per_token": attention_flops,
        "flops_per_token": counts["linear"] + attention_flops,
        "dense_flops_per_token": counts["dense_linear"] + attention_flops,
        "flops_ratio": flops_ratio(counts, seq_len),
        "matrices": [asdict(row) for row in rows],
    }
    if weights_file is not None:
        report["file_size_bytes"] = os.path.getsize(weights_file)
    return report
