"""benchmarks/train_step_components.py: a smoke run on a tiny model."""

import argparse

import torch
from conftest import load_benchmark

components = load_benchmark("train_step_components")


def test_every_component_is_timed_at_every_length_and_the_importance_moves(tiny_glue_model):
    args = argparse.Namespace(model=tiny_glue_model, kept=0.5, seq_lens=[8, 16], batch_size=2, steps=2, rounds=2,
                              warmup=1)
    results = components.measure(args)
    assert [r["seq_len"] for r in results] == [8, 16]
    for result in results:
        assert all(len(result["rounds_s"][name]) == 2 and result["median_s"][name] > 0 for name in components.COMPONENTS)
    table = components.markdown(results, "cmd", {})
    assert "| 8 | " in table and "update_and_allocate s (share)" in table


def test_the_timed_update_is_the_one_training_runs(tiny_glue_model):
    # The component must be RankDyna's real per-step update: after a timed step the statistics have moved.
    model = components.build(tiny_glue_model, 0.5).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    batch = {"input_ids": torch.randint(0, 99, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long),
             "labels": torch.tensor([0, 1])}
    layer = next(iter(model.base_model.rankdyna_layers().values()))
    components.time_components(model, optimizer, batch, steps=1, first_step=0)
    assert float(layer.group_scores()[layer.mask].sum()) > 0
