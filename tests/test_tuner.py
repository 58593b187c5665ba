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


def test_orthogonality_penalty_matches_a_hand_computation():
    layer = RankDynaLayer(nn.Linear(2, 3), "default")
    U, _, Vt = layer.factor_parameters()
    with torch.no_grad():
        U.copy_(torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]))  # UᵀU − I = [[0, 1], [1, 1]]: 3
        Vt.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))  # VᵀV − I = [[0, 0], [0, 3]]: 9
    assert float(layer.orthogonality_penalty().detach()) == 12.0


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


@pytest.mark.parametrize("step_scale", ["matched", 0.25, 1.0])
def test_an_adam_step_moves_the_factors_by_the_step_scale(step_scale):
    from peft_rankdyna.layer import matched_step_scale

    linear = nn.Linear(24, 16)
    expected_scale = matched_step_scale(linear.weight) if step_scale == "matched" else step_scale
    layer = RankDynaLayer(linear, "default", step_scale=step_scale)
    U_before = layer.factors()[0].detach().clone()
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-3)
    layer(torch.randn(8, 24)).pow(2).sum().backward()
    optimizer.step()  # Adam's first step moves every element with a gradient by lr exactly (m/√v = ±1)
    moved = (layer.factors()[0].detach() - U_before).abs()
    torch.testing.assert_close(moved, torch.full_like(moved, 1e-3 * expected_scale), rtol=1e-3, atol=1e-8)


def test_the_step_scale_changes_the_steps_not_the_function():
    linear = nn.Linear(24, 16)
    x = torch.randn(5, 24)
    expected = linear(x)
    for step_scale in ("matched", 0.1, 1.0):
        layer = RankDynaLayer(nn.Linear(24, 16), "default", step_scale=step_scale)
        layer.load_state_dict({"base_layer.bias": linear.bias.detach()}, strict=False)
        with torch.no_grad():
            U, s, Vt = torch.linalg.svd(linear.weight.detach(), full_matrices=False)
            scale = float(layer.rankdyna_step_scale["default"])
            for param, value in zip(layer.factor_parameters(), (U / scale, s, Vt / scale)):
                param.copy_(value)
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer.dense_weight(), linear.weight.detach(), atol=1e-5, rtol=1e-5)


def test_matched_step_scale_is_the_ratio_of_dense_to_factored_adam_steps():
    from peft_rankdyna.layer import matched_step_scale

    weight = torch.full((384, 1536), 0.5)  # ‖W‖_F = 0.5·√(384·1536)
    assert matched_step_scale(weight) == pytest.approx((384 * 1536) ** 0.5 / (0.5 * (384 * 1536) ** 0.5 * 1920 ** 0.5))
    assert matched_step_scale(torch.zeros(3, 4)) == 1.0


@pytest.mark.parametrize("bad", ["auto", 0, -1.0, True])
def test_a_bad_step_scale_is_refused(bad):
    with pytest.raises(ValueError, match="factor_step_scale"):
        RankDynaConfig(factor_step_scale=bad)
