"""ASVD-style scaling and SVD-LLM-style whitening: the statistics they take and the truncations they make."""

import pytest
import torch
from torch import nn

from peft_rankdyna.baselines import factor_model, input_statistics, input_transforms


class Embed(nn.Module):
    """Token ids → embeddings → one Linear: a model whose Linear inputs the test knows."""

    def __init__(self, vocab=50, width=12, out=10, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed, self.proj = nn.Embedding(vocab, width), nn.Linear(width, out)

    def forward(self, input_ids, attention_mask=None):
        return self.proj(self.embed(input_ids))


def _batches(seed=0, count=3):
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        ids = torch.randint(0, 50, (4, 9), generator=generator)
        mask = torch.ones_like(ids)
        mask[:2, 6:] = 0
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": ids})
    return batches


def _inputs(model, batches):
    """The Linear's inputs at the unpadded positions, as rows."""
    return torch.cat([model.embed(b["input_ids"])[b["attention_mask"].bool()] for b in batches]).detach()


def test_statistics_are_those_of_the_unpadded_inputs():
    model, batches = Embed(), _batches()
    stats = input_statistics(model, {"proj": model.proj}, batches)["proj"]
    X = _inputs(model, batches)
    assert stats.tokens == X.shape[0] == 3 * (4 * 9 - 2 * 3)
    torch.testing.assert_close(stats.gram, X.T @ X, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(stats.abs_sum, X.abs().sum(0), atol=1e-4, rtol=1e-5)


def test_asvd_scales_each_input_channel_by_its_mean_magnitude_to_the_half():
    model, batches = Embed(), _batches()
    S, S_inv = input_transforms(input_statistics(model, {"proj": model.proj}, batches, gram=False), "asvd")["proj"]
    X = _inputs(model, batches)
    torch.testing.assert_close(torch.diagonal(S), X.abs().mean(0) ** 0.5, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(S @ S_inv, torch.eye(12), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rank_budget", [0.3, 0.6])
def test_whitened_truncation_is_the_best_on_the_calibration_inputs(rank_budget):
    """SVD-LLM's claim, checked exactly: with S Sᵀ = XᵀX, the output error ‖X(W − W′)ᵀ‖_F² of the truncation
    is the sum of the discarded squared singular values of W·S, below plain SVD's error."""
    model, batches = Embed(width=16, out=16), _batches()
    X = _inputs(model, batches)
    W = model.proj.weight.detach().clone()
    transform = input_transforms(input_statistics(model, {"proj": model.proj}, batches), "svdllm")
    whitened = factor_model(Embed(width=16, out=16), rank_budget, ["proj"], input_transform=transform)
    plain = factor_model(Embed(width=16, out=16), rank_budget, ["proj"])
    rank = whitened.proj.rank if hasattr(whitened.proj, "rank") else 16

    def output_error(module):
        return (module(X) - model.proj(X)).pow(2).sum().item()

    S = transform["proj"][0]
    discarded = torch.linalg.svdvals(W @ S)[rank:].pow(2).sum().item()
    assert output_error(whitened.proj) == pytest.approx(discarded, rel=1e-3)
    assert output_error(whitened.proj) < output_error(plain.proj)


@pytest.mark.parametrize("method", ["asvd", "svdllm"])
def test_activation_aware_baselines_run_through_compress(tmp_path, tiny_glue_model, glue_dir, method):
    from peft_rankdyna.jobs import CompressSettings, compress

    results = compress(CompressSettings(model=tiny_glue_model, task="mrpc", output_dir=str(tmp_path / method),
                                        budget=0.5, method=method, max_steps=2, batch_size=8, max_seq_length=32,
                                        max_train_samples=32, max_eval_samples=16, glue_dir=glue_dir,
                                        calibration_samples=16, show_progress=False))
    assert results["train_steps"] == 2 and results["target_params_after"] <= 0.5 * results["target_params_before"]
    assert results["settings"]["method"] == method


# ----------------------------------------------------------------------------- RankDyna from a whitened basis
class Wrapped(nn.Module):
    """The Embed model under a name PEFT can target."""

    def __init__(self, seed=0):
        super().__init__()
        self.model = Embed(width=16, out=16, seed=seed)

    def forward(self, input_ids, attention_mask=None):
        return self.model(input_ids)


def test_a_whitened_basis_computes_the_same_and_its_masked_groups_are_svdllm_s_truncation():
    from peft import get_peft_model

    from peft_rankdyna import RankDynaConfig

    base, batches = Wrapped(), _batches()
    transform = input_transforms(input_statistics(base, {"model.proj": base.model.proj}, batches), "svdllm")
    expected_truncation = factor_model(Wrapped(), 0.5, ["model.proj"], input_transform=transform)
    X = _inputs(base.model, batches)
    dense = base.model.proj(X).detach()
    wrapped = get_peft_model(base, RankDynaConfig(target_modules=["model.proj"], target_budget=0.5, total_step=10))
    wrapped.base_model.rebase_factors(transform)
    layer = wrapped.base_model.rankdyna_layers()["model.proj"]
    torch.testing.assert_close(layer(X), dense, atol=1e-4, rtol=1e-4)  # the same matrix, re-factored
    S = transform["model.proj"][0]
    torch.testing.assert_close(layer.factors()[1], torch.linalg.svdvals(layer.dense_weight() @ S), atol=1e-4,
                               rtol=1e-4)  # each group's singular value is that of W·S
    rank = expected_truncation.model.proj.rank
    layer.set_mask(torch.arange(layer.initial_rank) < rank)  # keep the top groups, as a truncation would
    torch.testing.assert_close(layer(X), expected_truncation.model.proj(X), atol=1e-4, rtol=1e-4)


def test_rebase_refuses_a_layer_that_is_not_at_full_rank():
    from peft import get_peft_model

    from peft_rankdyna import RankDynaConfig

    base, batches = Wrapped(), _batches()
    transform = input_transforms(input_statistics(base, {"model.proj": base.model.proj}, batches), "svdllm")
    wrapped = get_peft_model(base, RankDynaConfig(target_modules=["model.proj"], target_budget=0.5, total_step=10,
                                                  init_budget=0.8))
    with pytest.raises(ValueError, match="full rank"):
        wrapped.base_model.rebase_factors(transform)
    with pytest.raises(ValueError, match="No input transform"):
        wrapped.base_model.rebase_factors({})


@pytest.mark.parametrize("overrides, message", [
    (dict(method="svdllm"), "use it with method 'rankdyna'"), (dict(budget=None), "use it with method 'rankdyna'"),
    (dict(rankdyna={"init_budget": 0.8}), "init_budget=None"), (dict(rankdyna={"orth_reg_weight": 0.1}), "orthogonality"),
    (dict(init_basis="pca"), "Unknown init_basis"),
])
def test_whitened_init_basis_refuses_settings_it_cannot_serve(tmp_path, overrides, message):
    from peft_rankdyna.jobs import CompressSettings

    with pytest.raises(ValueError, match=message):
        CompressSettings(**{"model": "m", "task": "mrpc", "output_dir": str(tmp_path), "init_basis": "whitened",
                            **overrides})


@pytest.mark.parametrize("overrides, expected", [
    (dict(objective="causal-lm"), "whitened"), (dict(objective="causal-lm", method="svd"), "svd"),
    (dict(objective="causal-lm", rankdyna={"init_budget": 0.8}), "svd"), (dict(), "svd"),
    (dict(objective="causal-lm", init_basis="svd"), "svd"),
    (dict(objective="embedding-distillation"), "whitened"),
    (dict(objective="embedding-distillation", budget=None), "svd"),
])
def test_the_default_init_basis_is_whitened_for_rankdyna_on_causal_lms_and_embeddings(tmp_path, overrides, expected):
    from peft_rankdyna.jobs import CompressSettings

    settings = CompressSettings(**{"model": "m", "task": None, "output_dir": str(tmp_path), **overrides})
    assert settings.init_basis == expected
