"""benchmarks/train_step.py: a smoke run on a tiny model, and its masked-product variant."""

import argparse

import torch
from conftest import load_benchmark

train_step = load_benchmark("train_step")


def test_every_variant_is_timed_in_every_round(tiny_glue_model):
    args = argparse.Namespace(model=tiny_glue_model, kept=[1.0, 0.5], batch_size=2, seq_len=8, steps=1, rounds=2, device="cpu",
                              warmup=1)
    results = train_step.measure(args)
    assert [r["variant"] for r in results] == ["dense", "RankDyna, kept 1", "RankDyna, kept 1, masked product",
                                               "RankDyna, kept 0.5", "RankDyna, kept 0.5, masked product"]
    assert all(len(r["round_means_s"]) == 2 and r["median_step_s"] > 0 for r in results)
    assert "| dense | " in train_step.markdown(results, "cmd", {})


def test_both_ways_of_masking_compute_the_same(tiny_glue_model):
    skipping, multiplying = train_step.build(tiny_glue_model, 0.5), train_step.build(tiny_glue_model, 0.5, True)
    layers = list(skipping.base_model.rankdyna_layers().values())
    assert all(0 < layer.rank < layer.initial_rank for layer in layers)
    batch = {"input_ids": torch.randint(0, 99, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    skipping.eval(), multiplying.eval()
    torch.testing.assert_close(skipping(**batch).logits, multiplying(**batch).logits, atol=1e-5, rtol=1e-5)
    layer = next(iter(multiplying.base_model.rankdyna_layers().values()))
    assert layer._forward_factors()[1].shape[0] == layer.initial_rank  # every group stays in the products
