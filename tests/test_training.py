import json
import warnings

import pytest
import torch
from conftest import RandomTask, custom_loop, tiny_batch, wrapped_model
from transformers import Trainer, TrainerCallback, TrainingArguments

from peft_rankdyna import RankDynaCallback
from peft_rankdyna.callback import HISTORY_FILE


def test_custom_loop_prunes_to_the_target_budget():
    model = wrapped_model(total_step=20)
    rankdyna = model.base_model
    assert rankdyna.kept_params() == rankdyna.dense_params()
    custom_loop(model, 20)
    assert rankdyna.kept_params() <= rankdyna.target_params()
    assert rankdyna.kept_params() > 0.9 * rankdyna.target_params()
    ranks = rankdyna.ranks()
    assert len(set(ranks.values())) > 1  # budget moved between matrices, not a uniform cut


def test_missing_total_steps_is_a_clear_error():
    model = wrapped_model()
    with pytest.raises(ValueError, match="total number of optimizer steps"):
        model.base_model.update_and_allocate(0)


def test_forgetting_the_allocator_warns_once():
    model = wrapped_model(total_step=20).train()
    batch = {**tiny_batch(), "labels": torch.tensor([0, 1, 0, 1])}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(7):
            model(**batch)
    messages = [str(w.message) for w in caught if "update_and_allocate" in str(w.message)]
    assert len(messages) == 1 and "RankDynaCallback" in messages[0]


def test_non_finite_gradients_are_skipped():
    model = wrapped_model(total_step=20).train()
    batch = {**tiny_batch(), "labels": torch.tensor([0, 1, 0, 1])}
    model(**batch).loss.backward()
    layer = next(iter(model.base_model.rankdyna_layers().values()))
    layer.factor_parameters()[1].grad[0] = float("nan")
    with pytest.warns(UserWarning, match="non-finite gradients at step 0"):
        model.base_model.update_and_allocate(0)
    assert all(torch.isfinite(b).all() for b in layer.rankdyna_importance["default"].buffers())
    assert float(layer.group_scores().abs().sum()) == 0.0


def test_the_finiteness_check_is_exact_even_where_a_sum_overflows():
    from peft_rankdyna.controller import gradients_finite

    layer = next(iter(wrapped_model(total_step=10).base_model.rankdyna_layers().values()))
    grad = torch.zeros_like(layer.factor_parameters()[0])
    layer.factor_parameters()[0].grad = grad
    assert gradients_finite([layer])
    grad.fill_(3e38)  # finite elements whose sum overflows: must not be taken for an overflowed step
    assert gradients_finite([layer])
    for poison in (float("inf"), float("nan")):
        grad.zero_()
        grad[0, 0] = poison
        assert not gradients_finite([layer])
    grad.zero_()
    grad[0, 0], grad[1, 0] = float("inf"), -float("inf")
    assert not gradients_finite([layer])


def _loop_with_poisoned_step(model, steps, poisoned):
    """:func:`custom_loop`, but the gradients of optimizer step ``poisoned`` are NaN (as after an overflow)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    data = RandomTask()
    model.train()
    budgets = []
    for step in range(steps):
        model(**data[[(step * 8 + i) % len(data) for i in range(8)]]).loss.backward()
        if step == poisoned:
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.fill_(float("nan"))
        else:
            optimizer.step()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.base_model.update_and_allocate(step)
        optimizer.zero_grad()
        budgets.append(model.base_model.kept_params())
    return budgets


def test_a_non_finite_first_final_step_moves_the_target_refresh_to_the_next_finite_step():
    model = wrapped_model(total_step=20, deltaT=6)  # refreshes at 4, 10, then the target at 16
    rankdyna = model.base_model
    final_start = rankdyna.rankdyna_config.schedule().final_start
    kept = _loop_with_poisoned_step(model, 20, poisoned=final_start)
    target = rankdyna.target_params()
    assert kept[final_start - 1] > target and kept[final_start] > target  # the refresh did not run at the NaN step
    assert kept[final_start + 1] <= target and rankdyna.last_budget == target  # it ran at the next one
    assert kept[-1] == kept[final_start + 1]  # and the mask stays frozen after it


def test_a_run_whose_target_refresh_never_ran_cannot_be_merged():
    model = wrapped_model(total_step=20, tfinal=0, deltaT=8)  # refreshes at 4, 12, then the target at 19, the last
    kept = _loop_with_poisoned_step(model, 20, poisoned=19)
    assert kept[-1] > model.base_model.target_params()
    with pytest.raises(ValueError, match="over the target budget"):
        model.merge_and_unload()


class RecordLogs(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def _trainer(model, output_dir, max_steps=16, callbacks=(), **args):
    arguments = TrainingArguments(
        output_dir=output_dir, max_steps=max_steps, per_device_train_batch_size=8, learning_rate=1e-3,
        logging_steps=4, save_strategy="steps", save_steps=6, report_to=[], disable_tqdm=True, use_cpu=True,
        seed=0, data_seed=0, **args,
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=RandomTask(), callbacks=list(callbacks))
    RankDynaCallback.attach(trainer)
    return trainer


def test_trainer_callback_prunes_logs_and_writes_history(tmp_path):
    recorder = RecordLogs()
    model = wrapped_model()
    trainer = _trainer(model, str(tmp_path), callbacks=[recorder])
    trainer.train()
    rankdyna = model.base_model
    assert rankdyna.rankdyna_config.total_step == 16  # taken from the Trainer
    assert rankdyna.kept_params() <= rankdyna.target_params()
    logged = recorder.logs[-1]
    assert logged["rankdyna/kept_params"] == rankdyna.kept_params()
    assert {"rankdyna/budget_params", "rankdyna/threshold", "rankdyna/rank/layer_0"} <= set(logged)
    history = json.loads((tmp_path / "rankdyna_history.json").read_text())
    assert [entry["step"] for entry in history] == [4, 6, 8, 10, 12]
    assert history[-1]["budget"] == rankdyna.target_params()


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    model = wrapped_model()
    calls = []
    original = model.base_model.update_and_allocate
    model.base_model.update_and_allocate = lambda step: calls.append(step) or original(step)
    _trainer(model, str(tmp_path), max_steps=10, gradient_accumulation_steps=2).train()
    assert calls == list(range(10))


def test_total_step_conflicting_with_trainer_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="total_step=50"):
        _trainer(wrapped_model(total_step=50), str(tmp_path)).train()


def _masks(model):
    return {name: layer.mask.clone() for name, layer in model.base_model.rankdyna_layers().items()}


def test_interrupted_and_resumed_run_ends_with_the_same_masks(tmp_path):
    uninterrupted = wrapped_model()
    _trainer(uninterrupted, str(tmp_path / "a")).train()

    interrupted = wrapped_model()
    _trainer(interrupted, str(tmp_path / "b"), callbacks=[StopAt(9)]).train()  # "crash" after the step-6 checkpoint
    checkpoint = tmp_path / "b" / "checkpoint-6"
    assert checkpoint.is_dir()
    resumed = wrapped_model()  # a fresh process would rebuild the model like this
    _trainer(resumed, str(tmp_path / "b")).train(resume_from_checkpoint=str(checkpoint))

    expected, actual = _masks(uninterrupted), _masks(resumed)
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    scores_a = [layer.group_scores() for layer in uninterrupted.base_model.rankdyna_layers().values()]
    scores_b = [layer.group_scores() for layer in resumed.base_model.rankdyna_layers().values()]
    for a, b in zip(scores_a, scores_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-12)
    histories = [json.loads((tmp_path / run / HISTORY_FILE).read_text()) for run in ("a", "b")]
    assert histories[0] == histories[1] and histories[0][0]["step"] < 6  # the entries before the checkpoint too


class PoisonFrom(TrainerCallback):
    """Makes every gradient NaN from optimizer step ``step`` on (as a diverged loss would)."""

    def __init__(self, step):
        self.step = step

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step >= self.step:
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.fill_(float("nan"))


def test_persistent_non_finite_gradients_stop_training_and_keep_the_last_good_checkpoint(tmp_path):
    model = wrapped_model()
    trainer = _trainer(model, str(tmp_path), max_steps=30, callbacks=[PoisonFrom(7)])
    trainer.callback_handler.callbacks[0].max_nonfinite_steps = 5
    with pytest.warns(UserWarning, match="non-finite"), pytest.raises(RuntimeError, match=r"5 optimizer steps in a row, the last at step 11.*checkpoint-6"):
        trainer.train()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-6"]


def test_sharded_training_is_refused_at_start():
    from types import SimpleNamespace

    from peft_rankdyna.callback import check_parallelism

    with pytest.raises(ValueError, match="does not support FSDP.*DDP"):
        check_parallelism(SimpleNamespace(fsdp=["full_shard"], deepspeed=None))
    with pytest.raises(ValueError, match="does not support DeepSpeed"):
        check_parallelism(SimpleNamespace(fsdp=[], deepspeed="ds_config.json"))
    check_parallelism(SimpleNamespace(fsdp=[], deepspeed=None))


def test_gradient_checkpointing_computes_the_same_training(tmp_path):
    runs = []
    for checkpointing in (False, True):
        model = wrapped_model()
        trainer = _trainer(model, str(tmp_path / str(checkpointing)), max_steps=12, gradient_checkpointing=checkpointing)
        trainer.train()
        runs.append(([e["loss"] for e in trainer.state.log_history if "loss" in e], _masks(model), model))
    (losses, masks, plain), (losses_ckpt, masks_ckpt, checkpointed) = runs
    assert len(losses) == 3 and losses == pytest.approx(losses_ckpt, rel=1e-5)
    assert all(torch.equal(masks[name], masks_ckpt[name]) for name in masks)
    assert plain.base_model.kept_params() <= plain.base_model.target_params()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
