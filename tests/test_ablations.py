"""The two ablations of RankDyna: per-matrix allocation and importance frozen after warm-up."""

import pytest
import torch
from conftest import custom_loop, wrapped_model

from peft_rankdyna import RankDynaConfig
from peft_rankdyna.allocator import allocate_per_matrix
from peft_rankdyna.budget import group_cost, matrix_cost


def test_per_matrix_keeps_the_same_fraction_everywhere():
    torch.manual_seed(0)
    shapes = {"a": (16, 16), "b": (48, 16), "c": (16, 48), "d": (30, 30)}
    scores = {n: torch.rand(min(s)) for n, s in shapes.items()}
    initial = {n: matrix_cost(min(s), *s) for n, s in shapes.items()}
    budget = sum(initial.values()) // 4
    allocation = allocate_per_matrix(scores, shapes, initial, budget)
    assert allocation.kept_params <= budget
    for name, mask in allocation.masks.items():
        kept = matrix_cost(int(mask.sum()), *shapes[name])
        assert initial[name] / 4 - group_cost(*shapes[name]) < kept <= initial[name] / 4
        best = torch.argsort(scores[name], descending=True)[: int(mask.sum())]
        assert mask[best].all()  # importance still picks which groups


def test_per_matrix_model_ends_with_uniform_fractions():
    model = wrapped_model(total_step=20, allocation="per_matrix")
    custom_loop(model, 20)
    fractions = [matrix_cost(layer.rank, layer.out_features, layer.in_features) / (layer.out_features * layer.in_features)
                 for layer in model.base_model.rankdyna_layers().values()]
    assert model.base_model.kept_params() <= model.base_model.target_params()
    assert max(fractions) - min(fractions) < 0.15


def test_frozen_importance_stops_updating_after_warm_up():
    model = wrapped_model(total_step=20, importance_updates="frozen")  # tinit=4
    custom_loop(model, 4)
    at_warm_up_end = [layer.group_scores().clone() for layer in model.base_model.rankdyna_layers().values()]
    custom_loop(model, 20, start=4)
    for before, layer in zip(at_warm_up_end, model.base_model.rankdyna_layers().values()):
        assert torch.equal(before, layer.group_scores())
    dynamic = wrapped_model(total_step=20)
    custom_loop(dynamic, 20)
    assert not torch.equal(at_warm_up_end[0], next(iter(dynamic.base_model.rankdyna_layers().values())).group_scores())


@pytest.mark.parametrize("field, value", [("allocation", "layerwise"), ("importance_updates", "static")])
def test_unknown_ablation_values_are_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        RankDynaConfig(**{field: value})
