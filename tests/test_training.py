import json
import warnings

import pytest
import torch
from conftest import tiny_batch, tiny_model
from peft import get_peft_model
from transformers import Trainer, TrainerCallback, TrainingArguments

from peft_rankdyna import RankDynaCallback, RankDynaConfig


class RandomTask(torch.utils.data.Dataset):
    """Tiny learnable task: label = whether token 5 appears in the first half."""

    def __init__(self, size=64, length=12, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(5, 99, (size, length), generator=generator)
        self.labels = (self.input_ids[:, : length // 2] < 30).any(dim=1).long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.input_ids[i], "attention_mask": torch.ones_like(self.input_ids[i]),
                "labels": self.labels[i]}


def _wrapped(**config):
    defaults = dict(target_budget=0.3, tinit=4, tfinal=4, deltaT=2, task_type="SEQ_CLS")
    return get_peft_model(tiny_model(), RankDynaConfig(**{**defaults, **config}))


def _custom_loop(model, steps, seed=0, start=0):
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = RandomTask()
    model.train()
    for step in range(start, steps):
        batch = data[[(step * 8 + i) % len(data) for i in range(8)]]
        model(**batch).loss.backward()
        optimizer.step()
        model.base_model.update_and_allocate(step)
        optimizer.zero_grad()


def test_custom_loop_prunes_to_the_target_budget():
    model = _wrapped(total_step=20)
    rankdyna = model.base_model
    assert rankdyna.kept_params() == rankdyna.dense_params()
    _custom_loop(model, 20)
    assert rankdyna.kept_params() <= rankdyna.target_params()
    assert rankdyna.kept_params() > 0.9 * rankdyna.target_params()
    ranks = rankdyna.ranks()
    assert len(set(ranks.values())) > 1  # budget moved between matrices, not a uniform cut


def test_missing_total_steps_is_a_clear_error():
    model = _wrapped()
    with pytest.raises(ValueError, match="total number of optimizer steps"):
        model.base_model.update_and_allocate(0)


def test_forgetting_the_allocator_warns_once():
    model = _wrapped(total_step=20).train()
    batch = {**tiny_batch(), "labels": torch.tensor([0, 1, 0, 1])}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(7):
            model(**batch)
    messages = [str(w.message) for w in caught if "update_and_allocate" in str(w.message)]
    assert len(messages) == 1 and "RankDynaCallback" in messages[0]


def test_non_finite_gradients_are_skipped():
    model = _wrapped(total_step=20).train()
    batch = {**tiny_batch(), "labels": torch.tensor([0, 1, 0, 1])}
    model(**batch).loss.backward()
    layer = next(iter(model.base_model.rankdyna_layers().values()))
    layer.factor_parameters()[1].grad[0] = float("nan")
    with pytest.warns(UserWarning, match="non-finite gradients at step 0"):
        model.base_model.update_and_allocate(0)
    assert all(torch.isfinite(b).all() for b in layer.rankdyna_importance["default"].buffers())
    assert float(layer.group_scores().abs().sum()) == 0.0


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
    model = _wrapped()
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
    model = _wrapped()
    calls = []
    original = model.base_model.update_and_allocate
    model.base_model.update_and_allocate = lambda step: calls.append(step) or original(step)
    _trainer(model, str(tmp_path), max_steps=10, gradient_accumulation_steps=2).train()
    assert calls == list(range(10))


def test_total_step_conflicting_with_trainer_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="total_step=50"):
        _trainer(_wrapped(total_step=50), str(tmp_path)).train()


def _masks(model):
    return {name: layer.mask.clone() for name, layer in model.base_model.rankdyna_layers().items()}


def test_interrupted_and_resumed_run_ends_with_the_same_masks(tmp_path):
    uninterrupted = _wrapped()
    _trainer(uninterrupted, str(tmp_path / "a")).train()

    interrupted = _wrapped()
    _trainer(interrupted, str(tmp_path / "b"), callbacks=[StopAt(9)]).train()  # "crash" after the step-6 checkpoint
    checkpoint = tmp_path / "b" / "checkpoint-6"
    assert checkpoint.is_dir()
    resumed = _wrapped()  # a fresh process would rebuild the model like this
    _trainer(resumed, str(tmp_path / "b")).train(resume_from_checkpoint=str(checkpoint))

    expected, actual = _masks(uninterrupted), _masks(resumed)
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    scores_a = [layer.group_scores() for layer in uninterrupted.base_model.rankdyna_layers().values()]
    scores_b = [layer.group_scores() for layer in resumed.base_model.rankdyna_layers().values()]
    for a, b in zip(scores_a, scores_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-12)


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
    model = _wrapped()
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


def test_gradient_checkpointing_works(tmp_path):
    model = _wrapped()
    _trainer(model, str(tmp_path), max_steps=12, gradient_checkpointing=True).train()
    assert model.base_model.kept_params() <= model.base_model.target_params()
