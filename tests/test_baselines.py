"""SVD and FWSVD baselines: budget, equivalence under uniform importance, Fisher by hand."""

import pytest
import torch
from conftest import tiny_batch, tiny_model
from torch import nn

from peft_rankdyna.baselines import factor_model, fisher_row_importance, uniform_rank
from peft_rankdyna.budget import matrix_cost
from peft_rankdyna.compact import LowRankLinear


def test_uniform_rank_is_the_largest_that_fits():
    shapes = {"a": (32, 32), "b": (48, 32), "c": (32, 48)}
    for budget in [0, 100, 2000, 4000, 10_000]:
        rank = uniform_rank(shapes, budget)
        assert sum(matrix_cost(rank, o, i) for o, i in shapes.values()) <= budget
        if rank < 32:
            assert sum(matrix_cost(rank + 1, o, i) for o, i in shapes.values()) > budget


@pytest.mark.parametrize("budget", [0.5, 0.25])
def test_svd_baseline_honours_the_budget(budget):
    model = factor_model(tiny_model(), budget)
    rows = [model.get_submodule(name) for name in model.rankdyna_ranks]
    assert len(rows) == 12
    kept = sum(matrix_cost(r, model.get_submodule(n).out_features, model.get_submodule(n).in_features)
               for n, r in model.rankdyna_ranks.items())
    assert kept <= budget * sum(m.in_features * m.out_features for m in rows)
    assert len(set(model.rankdyna_ranks.values())) == 1  # one uniform rank


def test_svd_baseline_at_full_budget_is_the_original_model():
    batch = tiny_batch()
    with torch.no_grad():
        expected = tiny_model()(**batch).logits
        actual = factor_model(tiny_model(), 1.0)(**batch).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)


def test_fwsvd_with_uniform_importance_is_svd():
    names = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.output.dense"]
    uniform = {name: torch.full((tiny_model().get_submodule(name).out_features,), 3.0) for name in names}
    svd = factor_model(tiny_model(), 0.3, names)
    fwsvd = factor_model(tiny_model(), 0.3, names, row_importance=uniform)
    for name in names:
        a, b = svd.get_submodule(name), fwsvd.get_submodule(name)
        assert isinstance(a, LowRankLinear)
        torch.testing.assert_close(a.up.weight @ a.down.weight, b.up.weight @ b.down.weight, atol=1e-5, rtol=1e-4)


def _one_linear_model(seed=0):
    torch.manual_seed(seed)
    model = nn.Module()
    model.proj = nn.Linear(16, 12)
    return model


def test_fwsvd_fits_important_rows_better_than_svd():
    importance = torch.ones(12)
    importance[:3] = 1e4
    weight = _one_linear_model().proj.weight.detach().clone()
    errors = []
    for row_importance in (None, {"proj": importance}):
        factored = factor_model(_one_linear_model(), 0.5, ["proj"], row_importance=row_importance).proj
        assert factored.rank == 3
        errors.append((factored.up.weight @ factored.down.weight - weight).pow(2).sum(dim=1).detach())
    svd_error, fwsvd_error = errors
    assert fwsvd_error[:3].sum() < 0.01 * svd_error[:3].sum()
    assert fwsvd_error.sum() >= svd_error.sum()  # plain SVD is the best unweighted fit


def test_fisher_accumulation_matches_a_hand_computation():
    torch.manual_seed(0)
    model = tiny_model()
    name = "bert.encoder.layer.0.intermediate.dense"
    batches = [{**tiny_batch(seed=s), "labels": torch.tensor([0, 1, 1, 0])} for s in range(3)]
    expected = torch.zeros(model.get_submodule(name).out_features)
    for batch in batches:
        model.zero_grad()
        model(**batch).loss.backward()
        expected += model.get_submodule(name).weight.grad.pow(2).sum(dim=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    importance = fisher_row_importance(model, batches, [name])
    torch.testing.assert_close(importance[name], expected)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.get_submodule(name).weight.grad is None


@pytest.mark.parametrize("method", ["svd", "fwsvd"])
def test_starting_from_a_dense_run_gives_the_two_round_pipelines_model(tmp_path, tiny_glue_model, glue_dir, method):
    from safetensors.torch import load_file

    from peft_rankdyna.compact import WEIGHTS_NAME
    from peft_rankdyna.jobs import CompressSettings, compress

    common = dict(model=tiny_glue_model, task="mrpc", max_steps=3, batch_size=8, max_seq_length=32,
                  max_train_samples=32, max_eval_samples=16, glue_dir=glue_dir, show_progress=False)
    full = compress(CompressSettings(output_dir=str(tmp_path / "full"), budget=0.5, method=method, **common))
    dense = compress(CompressSettings(output_dir=str(tmp_path / "dense"), budget=None, **common))
    reused = compress(CompressSettings(output_dir=str(tmp_path / "reused"), budget=0.5, method=method,
                                       finetuned_model=dense["finetuned_dir"], **common))
    assert reused["train_steps"] == 3 and reused["target_params_after"] == full["target_params_after"]
    expected = load_file(tmp_path / "full" / "compact" / WEIGHTS_NAME)
    actual = load_file(tmp_path / "reused" / "compact" / WEIGHTS_NAME)
    assert expected.keys() == actual.keys()
    assert max((expected[k] - actual[k]).abs().max().item() for k in expected) <= 1e-5


def test_a_finetuned_model_is_only_for_the_two_round_baselines(tmp_path):
    from peft_rankdyna.jobs import CompressSettings, compress

    for budget, method in [(0.5, "rankdyna"), (None, "svd")]:
        with pytest.raises(ValueError, match="two-round baselines"):
            compress(CompressSettings(model=str(tmp_path), task="mrpc", output_dir=str(tmp_path / "o"),
                                      budget=budget, method=method, finetuned_model=str(tmp_path)))


def test_a_classifier_with_another_head_size_is_a_clear_error(tmp_path):
    from peft_rankdyna.jobs.data.glue import get_task
    from peft_rankdyna.jobs.objectives.classification import load_classifier

    tiny_model(num_labels=2).save_pretrained(tmp_path / "mrpc-classifier")
    with pytest.raises(ValueError, match="classification head of another size than task 'stsb' needs"):
        load_classifier(str(tmp_path / "mrpc-classifier"), get_task("stsb"))
    assert load_classifier(str(tmp_path / "mrpc-classifier"), get_task("mrpc")).config.num_labels == 2
