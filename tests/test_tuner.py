import copy

import pytest
import torch
from conftest import TINY_CONFIGS, tiny_batch, tiny_model
from peft import get_peft_model
from peft.utils.peft_types import PeftType
from torch import nn

from peft_rankdyna import RankDynaConfig, RankDynaLayer


def _wrap(model_type="bert", **config):
    config.setdefault("total_step", 100)
    return get_peft_model(tiny_model(model_type), RankDynaConfig(task_type="SEQ_CLS", **config))


def test_rankdyna_is_a_peft_type():
    assert PeftType.RANKDYNA == "RANKDYNA"
    assert RankDynaConfig().peft_type == PeftType.RANKDYNA


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_default_targets_are_the_six_encoder_matrices(model_type):
    model = _wrap(model_type)
    layers = model.base_model.rankdyna_layers()
    assert len(layers) == 2 * 6  # 2 layers x (Q, K, V, attention out, FFN in, FFN out)
    assert not any("pooler" in name or "classifier" in name or "embeddings" in name for name in layers)


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_wrapped_model_reproduces_the_original(model_type):
    reference = tiny_model(model_type)
    batch = tiny_batch()
    with torch.no_grad():
        expected = reference(**batch).logits
        actual = _wrap(model_type).eval()(**batch).logits
    assert (actual - expected).abs().max() <= 1e-4


def test_dense_weight_dropped_and_everything_trainable():
    model = _wrap()
    layer = next(iter(model.base_model.rankdyna_layers().values()))
    assert layer.base_layer.weight is None
    assert layer.base_layer.bias.requires_grad
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("word_embeddings" in n for n in names) and any("LayerNorm" in n for n in names)
    assert any("rankdyna_U" in n for n in names) and any("rankdyna_s" in n for n in names)


def test_train_base_model_false_freezes_non_targets():
    model = _wrap(train_base_model=False)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert not any("word_embeddings" in n for n in names)
    assert any("classifier" in n for n in names)  # SEQ_CLS head is a module to save


def test_init_budget_starts_below_full_rank():
    model = _wrap(init_budget=1.0, target_budget=0.5)
    rankdyna = model.base_model
    assert rankdyna.initial_params() <= rankdyna.dense_params()
    for layer in rankdyna.rankdyna_layers().values():
        assert layer.initial_rank * (layer.in_features + layer.out_features) <= layer.in_features * layer.out_features


def test_masked_group_contributes_nothing_and_keeps_values():
    layer = RankDynaLayer(nn.Linear(6, 5), "default")
    x = torch.randn(3, 6)
    U, s, Vt = (p.detach().clone() for p in layer.factor_parameters())
    mask = torch.tensor([True, False, True, False, True])
    layer.set_mask(mask)
    expected = x @ ((U * (s * mask)) @ Vt).T + layer.base_layer.bias
    torch.testing.assert_close(layer(x), expected)
    layer.set_mask(torch.ones(5, dtype=torch.bool))
    for before, after in zip((U, s, Vt), layer.factor_parameters()):
        assert torch.equal(before, after)


@pytest.mark.parametrize("tokens", [1, 500])  # factored and composed paths
def test_masked_groups_get_zero_gradients_and_kept_ones_those_of_the_masked_product(tokens):
    layer = RankDynaLayer(nn.Linear(64, 48), "default")
    mask = torch.arange(48) % 3 == 0
    layer.set_mask(mask)
    x, target = torch.randn(tokens, 64), torch.randn(tokens, 48)
    U, s, Vt = (p.detach().clone().requires_grad_() for p in layer.factor_parameters())
    ((x @ ((U * (s * mask)) @ Vt).T + layer.base_layer.bias - target) ** 2).sum().backward()
    ((layer(x) - target) ** 2).sum().backward()
    for expected, actual in zip((U, s, Vt), layer.factor_parameters()):
        torch.testing.assert_close(actual.grad, expected.grad, atol=1e-4, rtol=1e-4)
    assert layer.factor_parameters()[1].grad[~mask].abs().max() == 0


def test_a_layer_with_every_group_masked_computes_its_bias():
    layer = RankDynaLayer(nn.Linear(6, 5), "default")
    layer.set_mask(torch.zeros(5, dtype=torch.bool))
    for tokens in (1, 50):
        torch.testing.assert_close(layer(torch.randn(tokens, 6)), layer.base_layer.bias.expand(tokens, 5))


def test_factored_and_composed_forward_agree():
    layer = RankDynaLayer(nn.Linear(64, 48), "default")
    layer.set_mask(torch.arange(48) % 3 == 0)
    one_token = torch.randn(1, 64)  # factored path (cheaper for one token)
    many_tokens = torch.cat([one_token, torch.randn(499, 64)])  # composed path
    torch.testing.assert_close(layer(one_token), layer(many_tokens)[:1], atol=1e-5, rtol=1e-5)


def test_no_module_matched_is_a_clear_error():
    with pytest.raises(ValueError, match="No modules were targeted"):
        _wrap(target_modules=["does_not_exist"])


def test_non_linear_target_is_a_clear_error():
    with pytest.raises(ValueError, match="Linear"):
        _wrap(target_modules=["word_embeddings"])
    with pytest.raises(ValueError, match="Linear"):
        _wrap(target_modules=["attention.self"])  # a BertSelfAttention container, not a Linear


def test_custom_regex_targets():
    model = _wrap(target_modules=r".*\.(query|value)")
    assert len(model.base_model.rankdyna_layers()) == 4


def test_adapter_cannot_be_disabled():
    model = _wrap()
    with pytest.raises(ValueError, match="cannot be disabled"):
        with model.disable_adapter():
            pass


@pytest.mark.parametrize("step_scale", [1.0, 0.25, 4.0])
def test_orthogonality_penalty_matches_a_hand_computation(step_scale):
    layer = RankDynaLayer(nn.Linear(2, 3), "default", factor_step_scale=step_scale)
    U, _, Vt = layer.factor_parameters()  # stored as U/c and Vᵀ/c: the penalty is on U and Vᵀ themselves
    with torch.no_grad():
        U.copy_(torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]) / step_scale)  # UᵀU − I = [[0, 1], [1, 1]]: 3
        Vt.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]) / step_scale)  # VᵀV − I = [[0, 0], [0, 3]]: 9
    assert float(layer.orthogonality_penalty().detach()) == 12.0  # c a power of 2: every value above is exact


@pytest.mark.parametrize("step_scale", ["matched", 0.1, 1.0, 3.0])
def test_orthogonality_penalty_is_zero_at_initialisation_whatever_the_step_scale(step_scale):
    torch.manual_seed(0)
    layer = RankDynaLayer(nn.Linear(24, 16), "default", factor_step_scale=step_scale)
    # The SVD factors are orthonormal; the stored U/c and Vᵀ/c are not (their Gram matrices are I/c²).
    assert float(layer.orthogonality_penalty().detach()) < 1e-8


def test_orthogonality_regulariser_is_added_to_the_loss():
    batch = {**tiny_batch(), "labels": torch.tensor([0, 1, 0, 1])}
    plain = _wrap().train()
    regularised = _wrap(orth_reg_weight=10.0).train()
    with torch.no_grad():
        for layer in regularised.base_model.rankdyna_layers().values():
            layer.factor_parameters()[0].mul_(2)  # make U far from orthonormal
        for layer in plain.base_model.rankdyna_layers().values():
            layer.factor_parameters()[0].mul_(2)
    torch.manual_seed(0)
    loss_plain = plain(**batch).loss
    torch.manual_seed(0)
    loss_reg = regularised(**batch).loss
    penalty = regularised.base_model.orthogonality_penalty()
    assert penalty > 0
    torch.testing.assert_close(loss_reg, loss_plain + 10.0 * penalty)


def _weight_with_known_svd(out_features, in_features, seed=0):
    """W = U·diag(s)·Vᵀ built from chosen orthonormal U, Vᵀ and singular values s = r, r−1, …, 1 (r = min shape),
    so ‖W‖_F² = Σ k² = r(r+1)(2r+1)/6 is known without asking the library (or torch.linalg.norm)."""
    generator = torch.Generator().manual_seed(seed)
    rank = min(out_features, in_features)
    U = torch.linalg.qr(torch.randn(out_features, rank, generator=generator))[0]
    Vt = torch.linalg.qr(torch.randn(in_features, rank, generator=generator))[0].T
    s = torch.arange(rank, 0, -1, dtype=torch.float32)
    return (U * s) @ Vt, U, s, Vt


def _linear(weight):
    linear = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        linear.weight.copy_(weight)
    return linear


# 16 × 24, singular values 16, …, 1: ‖W‖_F = √(16·17·33/6) = √1496, so the matched c is √(16·24) / (√1496·√(16+24)).
MATCHED_16x24 = (16 * 24) ** 0.5 / (1496**0.5 * 40**0.5)


def test_matched_step_scale_of_a_matrix_of_known_norm():
    from peft_rankdyna.layer import matched_step_scale

    weight = _weight_with_known_svd(16, 24)[0]
    assert matched_step_scale(weight) == pytest.approx(MATCHED_16x24, rel=1e-5)
    assert MATCHED_16x24 == pytest.approx(0.0801, abs=1e-4)  # the closed form above, evaluated by hand
    weight = torch.full((384, 1536), 0.5)  # ‖W‖_F = 0.5·√(384·1536): c = 1/(0.5·√1920) = 0.04564
    assert matched_step_scale(weight) == pytest.approx(0.04564, abs=1e-5)
    assert matched_step_scale(torch.zeros(3, 4)) == 1.0  # no norm to match: plain steps


@pytest.mark.parametrize("step_scale", ["matched", 0.25, 1.0, 3.0])
def test_an_adam_step_moves_the_factors_by_the_step_scale(step_scale):
    linear = _linear(_weight_with_known_svd(16, 24)[0])
    expected_scale = MATCHED_16x24 if step_scale == "matched" else step_scale
    layer = RankDynaLayer(linear, "default", factor_step_scale=step_scale)
    assert layer.factor_step_scale == pytest.approx(expected_scale, rel=1e-5)
    U_before, s_before, Vt_before = (f.detach().clone() for f in layer.factors())
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-3)
    torch.manual_seed(0)
    ((layer(torch.randn(8, 24)) - torch.randn(8, 16)) ** 2).sum().backward()
    optimizer.step()  # Adam's first step moves every element with a gradient by lr exactly (m/√v = ±1)
    U_after, s_after, Vt_after = (f.detach() for f in layer.factors())
    for before, after in ((U_before, U_after), (Vt_before, Vt_after)):  # the true U, Vᵀ move c times as far
        moved = (after - before).abs()
        torch.testing.assert_close(moved, torch.full_like(moved, 1e-3 * expected_scale), rtol=2e-3, atol=1e-8)
    # s is stored as it is (the forward multiplies it by c²): its own step is lr
    torch.testing.assert_close((s_after - s_before).abs(), torch.full_like(s_before, 1e-3), rtol=2e-3, atol=1e-8)


@pytest.mark.parametrize("step_scale", ["matched", 0.1, 1.0, 3.0])
def test_the_step_scale_changes_the_steps_not_the_function(step_scale):
    weight, U, s, Vt = _weight_with_known_svd(16, 24)
    linear = _linear(weight)
    x = torch.randn(5, 24)
    with torch.no_grad():
        expected = linear(x)
    scale = MATCHED_16x24 if step_scale == "matched" else step_scale
    layer = RankDynaLayer(copy.deepcopy(linear), "default", factor_step_scale=step_scale)  # through update_layer
    assert layer.factor_step_scale == pytest.approx(scale, rel=1e-5)
    stored_U, stored_s, stored_Vt = (p.detach() for p in layer.factor_parameters())
    # W's SVD is unique up to the sign of each (u_k, v_k) pair: take the signs from the stored U.
    signs = torch.sign((stored_U * U).sum(0))
    # Stored U/c and Vᵀ/c, compared at the true factors' scale: fp32 SVD noise in them is divided by c too.
    torch.testing.assert_close(stored_U * scale, U * signs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(stored_Vt * scale, signs[:, None] * Vt, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(stored_s, s, atol=1e-4, rtol=1e-5)
    true_U, true_s, true_Vt = (f.detach() for f in layer.factors())
    torch.testing.assert_close(true_U, U * signs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(true_Vt, signs[:, None] * Vt, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer.dense_weight(), weight, atol=1e-4, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, atol=1e-4, rtol=1e-5)


def _relative_adam_step(module, weight, x, target, lr):
    """‖ΔW‖_F / ‖W‖_F after one Adam step on the squared error, W read by ``weight()``."""
    before = weight().detach().clone()
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    ((module(x) - target) ** 2).sum().backward()
    optimizer.step()
    return float((weight().detach() - before).norm() / before.norm())


def test_matched_step_scale_is_the_ratio_of_dense_to_factored_adam_steps():
    """One Adam step at the same lr: dense moves W by lr·√(out·in) (every element by lr). The factored layer moves
    U by c·lr per element, i.e. W by c·lr·√out·‖W‖_F through U and c·lr·√in·‖W‖_F through Vᵀ (exactly: U, V are
    orthonormal); matched c makes each of those the share √(out/(out+in)), √(in/(out+in)) of the dense step.

    The two are not orthogonal, as the closed form assumes: both descend the same gradient (cosine ≈ 0.5 here), and s
    adds c²·lr·√r, so the matched factored step measures 1.3× the dense one (1.22–1.38 over the shapes 16×24 to
    32×96 and seeds tried). At c = 1 it is 1/c as large again: ~4× dense for this weight (c = 0.315; MiniLM: 2–3×).
    """
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    with torch.no_grad():
        linear.weight.normal_(0, 0.3)  # ‖W‖_F ≈ 0.3·√(48·64): c ≈ 1/(0.3·√112) ≈ 0.315, far from 1
    x, target, lr = torch.randn(32, 64), torch.randn(32, 48), 1e-4
    norm = float(linear.weight.detach().pow(2).sum().sqrt())
    matched = (48 * 64) ** 0.5 / (norm * 112**0.5)
    assert matched == pytest.approx(0.315, abs=0.01)

    dense = copy.deepcopy(linear)
    dense_step = _relative_adam_step(dense, lambda: dense.weight, x, target, lr)
    assert dense_step == pytest.approx(lr * (48 * 64) ** 0.5 / norm, rel=1e-3)  # every element moved by lr

    steps = {}
    for step_scale in ("matched", 1.0):
        layer = RankDynaLayer(copy.deepcopy(linear), "default", factor_step_scale=step_scale)
        steps[step_scale] = _relative_adam_step(layer, layer.dense_weight, x, target, lr) / dense_step
    assert 0.8 < steps["matched"] < 1.5, steps  # about the dense step (1.30 measured)
    assert steps[1.0] > 3.0, steps  # plain Adam on the factors: 3.98 measured
    # The U and Vᵀ steps scale with c, the s step with c²: removing c multiplies the step by about 1/c.
    assert steps[1.0] / steps["matched"] == pytest.approx(1 / matched, rel=0.1), steps


@pytest.mark.parametrize("bad", ["auto", 0, -1.0, True])
def test_a_bad_step_scale_is_refused(bad):
    with pytest.raises(ValueError, match="factor_step_scale"):
        RankDynaConfig(factor_step_scale=bad)
