import torch
from torch import nn

from peft_rankdyna.importance import GroupImportance


def _factors_with_grads(out_f=3, in_f=2, rank=2, seed=0):
    torch.manual_seed(seed)
    params = [nn.Parameter(torch.randn(out_f, rank)), nn.Parameter(torch.randn(rank)), nn.Parameter(torch.randn(rank, in_f))]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def test_update_matches_hand_computation():
    U, s, Vt = _factors_with_grads()
    importance = GroupImportance(2, 3, 2)
    importance.update(U, s, Vt, torch.ones(2, dtype=torch.bool), beta1=0.8, beta2=0.7)
    instant_s = (s * s.grad).abs().detach()
    sensitivity_s = 0.2 * instant_s
    uncertainty_s = 0.3 * (instant_s - sensitivity_s).abs()
    torch.testing.assert_close(importance.sensitivity_s, sensitivity_s)
    torch.testing.assert_close(importance.uncertainty_s, uncertainty_s)

    def element_score(p):
        instant = (p * p.grad).abs().detach()
        return (0.2 * instant) * (0.3 * (instant - 0.2 * instant).abs())

    expected = element_score(s) + element_score(U).mean(0) + element_score(Vt).mean(1)
    torch.testing.assert_close(importance.scores(), expected)


def test_masked_groups_keep_their_statistics():
    U, s, Vt = _factors_with_grads()
    importance = GroupImportance(2, 3, 2)
    importance.update(U, s, Vt, torch.ones(2, dtype=torch.bool), 0.85, 0.85)
    before = importance.scores().clone()
    U2, s2, Vt2 = _factors_with_grads(seed=1)
    importance.update(U2, s2, Vt2, torch.tensor([True, False]), 0.85, 0.85)
    after = importance.scores()
    assert after[1] == before[1]
    assert after[0] != before[0]


def test_several_updates_follow_the_ema_recursion_by_hand():
    importance = GroupImportance(2, 3, 2)
    beta1, beta2 = 0.85, 0.6
    sensitivity, uncertainty = 0.0, 0.0
    for seed in range(4):  # four different gradients: the β·(old EMA) terms are exercised from the second on
        U, s, Vt = _factors_with_grads(seed=seed)
        importance.update(U, s, Vt, torch.ones(2, dtype=torch.bool), beta1=beta1, beta2=beta2)
        instant = (s * s.grad).abs().detach()
        sensitivity = beta1 * sensitivity + (1 - beta1) * instant
        uncertainty = beta2 * uncertainty + (1 - beta2) * (instant - sensitivity).abs()
    torch.testing.assert_close(importance.sensitivity_s, sensitivity)
    torch.testing.assert_close(importance.uncertainty_s, uncertainty)
    assert float(uncertainty.min()) > 0  # the gradients differed, so the uncertainty is not zero


def test_in_place_update_gives_the_bits_of_the_formulas_under_masks():
    # ema_update is written as in-place products by per-group factors for speed; it must give exactly the
    # bits of the formulas computed out of place, kept groups updated and masked ones left as they were.
    generator = torch.Generator().manual_seed(0)
    importance = GroupImportance(8, 16, 12)
    expected = {name: torch.zeros_like(buffer) for name, buffer in importance.named_buffers()}
    beta1, beta2 = 0.85, 0.7
    for step in range(6):
        params = [nn.Parameter(torch.randn(shape, generator=generator)) for shape in ((16, 8), (8,), (8, 12))]
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator) * 1e-3
        active = torch.rand(8, generator=generator) < (1.0 if step < 2 else 0.5)
        importance.update(*params, active, beta1, beta2)
        for factor, p, where in zip(("U", "s", "Vt"), params, (active[None, :], active, active[:, None])):
            instant = (p * p.grad).abs().detach()
            old_s, old_u = expected[f"sensitivity_{factor}"], expected[f"uncertainty_{factor}"]
            new_s = beta1 * old_s + (1 - beta1) * instant
            new_u = beta2 * old_u + (1 - beta2) * (instant - new_s).abs()
            expected[f"sensitivity_{factor}"] = torch.where(where, new_s, old_s)
            expected[f"uncertainty_{factor}"] = torch.where(where, new_u, old_u)
    for name, buffer in importance.named_buffers():
        assert torch.equal(buffer, expected[name]), name
    assert bool((~active).any()) and bool((expected["sensitivity_s"] > 0).all())  # masks and updates exercised


def test_masked_groups_keep_their_statistics_even_when_the_product_overflows():
    importance = GroupImportance(2, 3, 2)
    importance.sensitivity_s.copy_(torch.tensor([0.5, float("inf")]))
    importance.uncertainty_U.fill_(0.25)
    before = {name: buffer.clone() for name, buffer in importance.named_buffers()}
    U, s, Vt = _factors_with_grads()
    U.data[:, 1], U.grad[:, 1] = 1e30, 1e30  # param · grad overflows to inf in the masked group's column of U
    importance.update(U, s, Vt, torch.tensor([True, False]), 0.85, 0.85)
    for name, buffer in importance.named_buffers():
        assert torch.equal(buffer[..., 1] if name.endswith(("_U", "_s")) else buffer[1], before[name][..., 1]
                           if name.endswith(("_U", "_s")) else before[name][1]), name
        assert not torch.equal(buffer, before[name]), name  # the kept group was updated


def test_half_precision_factors_and_a_double_default_dtype_give_the_same_statistics():
    # fp16 factors are multiplied in fp32; β is rounded to the statistics' dtype whatever the default dtype.
    U, s, Vt = _factors_with_grads()
    reference = GroupImportance(2, 3, 2)
    reference.update(U, s, Vt, torch.tensor([True, False]), 0.85, 0.7)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        under_double = GroupImportance(2, 3, 2)  # fp32 buffers even so
        under_double.update(U, s, Vt, torch.tensor([True, False]), 0.85, 0.7)
    finally:
        torch.set_default_dtype(default)
    for (name, buffer), other in zip(reference.named_buffers(), under_double.buffers()):
        assert other.dtype == torch.float32 and torch.equal(buffer, other), name
    half = [torch.nn.Parameter(p.detach().half()) for p in (U, s, Vt)]
    for p, full in zip(half, (U, s, Vt)):
        p.grad = full.grad.half()
    from_half = GroupImportance(2, 3, 2)
    from_half.update(*half, torch.tensor([True, False]), 0.85, 0.7)
    assert all(b.dtype == torch.float32 and bool(torch.isfinite(b).all()) for b in from_half.buffers())
    torch.testing.assert_close(from_half.scores(), reference.scores(), rtol=1e-2, atol=0)
