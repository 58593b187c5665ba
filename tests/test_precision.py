"""Mixed precision: bf16 autocast trains and prunes; a gradient scaler's loss scale never reaches the scores."""

import torch
from conftest import tiny_model
from peft import get_peft_model
from conftest import RandomTask

from peft_rankdyna import RankDynaConfig


def _loop(model, steps, autocast_dtype=None, scaler=None):
    """SGD steps on RandomTask, optionally under CPU autocast and a gradient scaler; returns the losses."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    data = RandomTask()
    model.train()
    losses = []
    for step in range(steps):
        batch = data[[(step * 8 + i) % len(data) for i in range(8)]]
        with torch.autocast("cpu", dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss = model(**batch).loss
        losses.append(float(loss.detach()))
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)  # unscales the gradients in place before stepping
            scaler.update()
        model.base_model.update_and_allocate(step)
        optimizer.zero_grad()
    return losses


def _mask_agreement(a, b):
    """Share of singular groups on which two models' masks agree."""
    pairs = zip(a.base_model.rankdyna_layers().values(), b.base_model.rankdyna_layers().values())
    same, total = 0, 0
    for x, y in pairs:
        same, total = same + int((x.mask == y.mask).sum()), total + len(x.mask)
    return same / total


def _wrapped():
    config = RankDynaConfig(target_budget=0.4, tinit=2, tfinal=2, deltaT=2, total_step=10, task_type="SEQ_CLS")
    return get_peft_model(tiny_model(), config)


def test_bf16_autocast_tracks_the_fp32_run():
    runs = []
    for dtype in (None, torch.bfloat16):
        torch.manual_seed(0)
        model = _wrapped()
        runs.append((model, _loop(model, 10, autocast_dtype=dtype)))
    (fp32, losses32), (bf16, losses16) = runs
    # bf16 rounds activations to 8 mantissa bits (~0.4%): the losses agree to a few 1e-3
    assert all(abs(a - b) < 2e-2 for a, b in zip(losses32, losses16)), (losses32, losses16)
    assert bf16.base_model.kept_params() <= bf16.base_model.target_params()
    assert _mask_agreement(fp32, bf16) >= 0.9


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


def test_importance_statistics_stay_fp32_when_the_model_is_halved():
    model = _wrapped().half()
    for layer in model.base_model.rankdyna_layers().values():
        buffers = list(layer.rankdyna_importance["default"].buffers())
        assert buffers and all(b.dtype == torch.float32 for b in buffers)
        assert layer.factor_parameters()[0].dtype == torch.float16  # the factors did follow .half()


def test_scores_of_order_1e_13_survive_in_a_half_precision_model():
    layer = _wrapped().half().base_model.rankdyna_layers()["bert.encoder.layer.0.attention.self.query"]
    U, s, Vt = layer.factor_parameters()
    for p in (U, s, Vt):
        p.grad = torch.full_like(p, 3e-7)  # |θ·g| ≤ 1e-7 for most elements: below fp16's smallest subnormal (6e-8) once halved
    layer.update_importance(0.5, 0.5)
    scores = layer.group_scores()
    assert scores.dtype == torch.float32 and bool((scores > 0).all())


def test_fp16_autocast_with_a_scaler_tracks_the_fp32_run():
    runs = []
    for dtype in (None, torch.float16):
        torch.manual_seed(0)
        model = _wrapped()
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10) if dtype else None
        runs.append((model, _loop(model, 10, autocast_dtype=dtype, scaler=scaler)))
    (fp32, losses32), (fp16, losses16) = runs
    assert all(abs(a - b) < 2e-2 for a, b in zip(losses32, losses16)), (losses32, losses16)
    assert fp16.base_model.kept_params() <= fp16.base_model.target_params()
    assert _mask_agreement(fp32, fp16) >= 0.9
