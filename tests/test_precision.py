"""Mixed precision: bf16 autocast trains and prunes; a gradient scaler's loss scale never reaches the scores."""

import torch
from conftest import tiny_model
from peft import get_peft_model
from test_training import RandomTask

from peft_rankdyna import RankDynaConfig


def _loop(model, steps, autocast_dtype=None, scaler=None):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    data = RandomTask()
    model.train()
    for step in range(steps):
        batch = data[[(step * 8 + i) % len(data) for i in range(8)]]
        with torch.autocast("cpu", dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss = model(**batch).loss
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)  # unscales the gradients in place before stepping
            scaler.update()
        model.base_model.update_and_allocate(step)
        optimizer.zero_grad()


def _wrapped():
    config = RankDynaConfig(target_budget=0.4, tinit=2, tfinal=2, deltaT=2, total_step=10, task_type="SEQ_CLS")
    return get_peft_model(tiny_model(), config)


def test_bf16_autocast_trains_and_prunes():
    model = _wrapped()
    _loop(model, 10, autocast_dtype=torch.bfloat16)
    assert model.base_model.kept_params() <= model.base_model.target_params()
    assert all(torch.isfinite(layer.group_scores()).all() for layer in model.base_model.rankdyna_layers().values())


def test_loss_scale_does_not_change_the_scores():
    runs = []
    for scale in (2.0**4, 2.0**14):
        torch.manual_seed(0)
        model = _wrapped()
        _loop(model, 10, scaler=torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=3))
        runs.append(model.base_model)
    for (name, a), b in zip(runs[0].rankdyna_layers().items(), runs[1].rankdyna_layers().values()):
        torch.testing.assert_close(a.group_scores(), b.group_scores(), rtol=1e-5, atol=0, msg=name)
        assert torch.equal(a.mask, b.mask)
