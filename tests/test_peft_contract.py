"""PEFT's contract, tried as a PEFT user would: plain nn.Module models, merge flags, failed calls, state dicts."""

import pytest
import torch
from conftest import custom_loop, tiny_batch, tiny_model, wrapped_model
from peft import get_base_model_state_dict, get_peft_model, set_base_model_state_dict
from torch import nn

from peft_rankdyna import RankDynaConfig, RankDynaLayer


class MLP(nn.Module):
    """PEFT's own custom-model tests use small MLPs like this one."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin0 = nn.Linear(10, 20)
        self.relu = nn.ReLU()
        self.lin1 = nn.Linear(20, 6)
        self.conv2d = nn.Conv2d(1, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin1(self.relu(self.lin0(x)))


def _mlp_model(budget=0.5, steps=8):
    config = RankDynaConfig(target_modules=["lin0", "lin1"], target_budget=budget, tinit=2, tfinal=2, deltaT=2,
                            total_step=steps)
    model = get_peft_model(MLP(), config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 10), torch.randn(16, 6)
    for step in range(steps):
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        model.base_model.update_and_allocate(step)
        optimizer.zero_grad()
    return model.eval(), x


def test_merge_adapter_and_unmerge_adapter_say_what_to_use_instead():
    model = wrapped_model(total_step=10)
    for call in (model.merge_adapter, model.unmerge_adapter):
        with pytest.raises(NotImplementedError, match=r"merge_and_unload\(\)"):
            call()


def test_merge_and_unload_of_a_plain_module_gives_its_truncated_layers():
    model, x = _mlp_model()
    with torch.no_grad():
        expected = model(x)
    ranks = model.base_model.ranks()
    assert any(rank < 6 for rank in ranks.values())  # something was pruned
    merged = model.merge_and_unload()
    assert type(merged) is MLP and not any(isinstance(m, RankDynaLayer) for m in merged.modules())
    torch.testing.assert_close(merged(x), expected, atol=1e-5, rtol=1e-5)


def test_merge_refuses_a_model_over_its_target_and_changes_nothing():
    model = wrapped_model(total_step=20)  # never trained: full rank, over the 0.3 target
    with pytest.raises(ValueError, match="over the target budget.*allocate_to_target"):
        model.merge_and_unload()
    assert len(model.base_model.rankdyna_layers()) == 12  # nothing unloaded
    model.base_model.allocate_to_target()
    assert model.base_model.kept_params() <= model.base_model.target_params()
    model.merge_and_unload()


def test_safe_merge_names_non_finite_weights_and_leaves_the_model_intact():
    model = wrapped_model(total_step=20)
    custom_loop(model, 20)
    name, layer = sorted(model.base_model.rankdyna_layers().items())[3]
    with torch.no_grad():
        layer.factor_parameters()[2][layer.rankdyna_kept["default"][0], 0] = float("nan")
    with pytest.raises(ValueError, match=rf"NaNs or infinities.*{name} \(Vt\)"):
        model.merge_and_unload(safe_merge=True)
    assert len(model.base_model.rankdyna_layers()) == 12
    model.merge_and_unload()  # without the flag PEFT does not check, as for its own methods


def test_a_refused_target_leaves_the_callers_model_untouched():
    mlp = MLP()
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    with pytest.raises(ValueError, match="Target module conv2d is a Conv2d"):
        get_peft_model(mlp, RankDynaConfig(target_modules=["lin0", "conv2d"], total_step=10))
    assert type(mlp.lin0) is nn.Linear and mlp.lin0.weight is not None
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items())


def test_base_model_state_dict_round_trip():
    model = wrapped_model(total_step=20)
    custom_loop(model, 20)
    model.eval()
    batch = tiny_batch()
    with torch.no_grad():  # the encoder's output: PEFT's base state dict holds the head's original copy
        expected = model.base_model.model.bert(**batch).last_hidden_state
    state = get_base_model_state_dict(model)
    name = "bert.encoder.layer.0.attention.self.query"
    layer = model.base_model.model.get_submodule(name)
    torch.testing.assert_close(state[f"{name}.weight"], layer.dense_weight())
    # the dense state dict loads into a plain copy of the base model and computes the same
    plain = tiny_model()
    plain.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval().bert(**batch).last_hidden_state, expected, atol=1e-5, rtol=1e-4)
    # and back into the RankDyna model: accepted when it matches, a clear error when it does not
    assert not set_base_model_state_dict(model, state).missing_keys
    state[f"{name}.weight"] = state[f"{name}.weight"] + 1.0
    with pytest.raises(ValueError, match=f"{name}.base_layer.weight differs"):
        set_base_model_state_dict(model, state)


def test_adapter_files_do_not_carry_the_dense_weights(tmp_path):
    model = wrapped_model(total_step=20)
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "adapter_model.safetensors")
    assert not [k for k in keys if k.endswith("base_layer.weight") and "encoder" in k]
    assert any(k.endswith("rankdyna_U") or "rankdyna_U" in k for k in keys)
