"""Issue #21 §5: a learning-rate restart at the final phase and self-distillation, inside one RankDyna round."""

import pytest
import torch
from conftest import RandomTask, wrapped_model
from transformers import TrainerCallback, TrainingArguments
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import ModelOutput

from peft_rankdyna import RankDynaTrainer
from peft_rankdyna.phases import output_distance, restarted_linear_schedule


def test_the_restarted_schedule_warms_up_and_decays_twice():
    factor = restarted_linear_schedule(total=100, restart=60, warmups=(6, 4))
    values = [factor(step) for step in range(100)]
    assert values[0] == 0 and values[6] == pytest.approx(1.0) and values[59] == pytest.approx(1 / 54)
    assert values[60] == 0 and values[64] == pytest.approx(1.0) and values[99] == pytest.approx(1 / 36)
    assert all(a <= b for a, b in zip(values[60:64], values[61:65]))  # rising again after the restart
    no_warmup = restarted_linear_schedule(100, 60, (0, 0))
    assert (no_warmup(0), no_warmup(60), no_warmup(80)) == (1.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="inside the run"):
        restarted_linear_schedule(100, 100, (6, 4))


def test_output_distance_per_kind_of_output():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    same = SequenceClassifierOutput(logits=logits)
    assert output_distance(same, same).item() == pytest.approx(0.0, abs=1e-7)
    flat = SequenceClassifierOutput(logits=torch.zeros(2, 2))
    p = torch.softmax(logits, -1)  # KL(teacher ‖ student) with the student uniform
    expected = (p * (p.log() - torch.log(torch.tensor(0.5)))).sum(-1).mean()
    assert output_distance(flat, same).item() == pytest.approx(expected.item(), rel=1e-5)
    regression = SequenceClassifierOutput(logits=torch.tensor([[1.0], [3.0]]))
    assert output_distance(regression, SequenceClassifierOutput(logits=torch.zeros(2, 1))).item() == 5.0
    tokens = SequenceClassifierOutput(logits=torch.stack([logits, logits * 0]))  # batch 2 × 2 tokens × 2 classes
    teacher = SequenceClassifierOutput(logits=torch.stack([logits, logits]))
    masked = output_distance(tokens, teacher, torch.tensor([[1, 1], [0, 0]]))
    assert masked.item() == pytest.approx(0.0, abs=1e-7)  # the only differing tokens are padding
    assert output_distance(tokens, teacher, torch.tensor([[1, 1], [1, 1]])).item() == pytest.approx(
        expected.item() / 2, rel=1e-5)
    embeddings = ModelOutput(embeddings=torch.ones(2, 3))
    assert output_distance(embeddings, ModelOutput(embeddings=torch.zeros(2, 3))).item() == 1.0
    with pytest.raises(ValueError, match="neither"):
        output_distance(ModelOutput(loss=torch.tensor(1.0)), ModelOutput(loss=torch.tensor(1.0)))


class Record(TrainerCallback):
    """Learning rate per step, and a copy of one weight when the warm-up (4 steps) ends."""

    def __init__(self):
        self.rates, self.weight_at_warmup_end = [], None

    def on_step_begin(self, args, state, control, optimizer=None, model=None, **kwargs):
        self.rates.append(optimizer.param_groups[0]["lr"])
        if state.global_step == 4:
            self.weight_at_warmup_end = model.base_model.model.classifier.weight.detach().clone()


def _train(tmp_path, **options):
    record = Record()
    arguments = TrainingArguments(output_dir=str(tmp_path), max_steps=20, per_device_train_batch_size=8,
                                  learning_rate=1e-3, warmup_ratio=0.1, report_to=[], disable_tqdm=True, use_cpu=True,
                                  save_strategy="no", seed=0)
    trainer = RankDynaTrainer(model=wrapped_model(tinit=4, tfinal=6), args=arguments, train_dataset=RandomTask(),
                              callbacks=[record], **options)
    trainer.train()
    return trainer, record


def test_the_trainer_restarts_the_learning_rate_at_the_final_phase(tmp_path):
    _, plain = _train(tmp_path / "plain")
    _, restarted = _train(tmp_path / "restart", final_lr_restart=True)
    final_start = 20 - 6
    assert plain.rates[final_start] < plain.rates[final_start - 1]  # one decay throughout
    assert restarted.rates[final_start] == 0.0 and restarted.rates[final_start - 1] > 0
    assert max(restarted.rates[final_start:]) == pytest.approx(1e-3)  # warmed up to the peak again
    cosine = TrainingArguments(output_dir=str(tmp_path / "c"), lr_scheduler_type="cosine", report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match="restarts the Trainer's own linear schedule"):
        RankDynaTrainer(model=wrapped_model(), final_lr_restart=True, args=cosine)


def test_self_distillation_learns_from_the_model_as_the_warm_up_left_it(tmp_path):
    trainer, record = _train(tmp_path, self_distill_weight=1.0)
    teacher = trainer._self_teacher
    assert teacher is not None and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    torch.testing.assert_close(teacher.base_model.model.classifier.weight, record.weight_at_warmup_end)
    assert not torch.equal(trainer.model.base_model.model.classifier.weight, record.weight_at_warmup_end)
    model, batch = trainer.model.train(), RandomTask()[list(range(8))]

    def loss(weight):
        trainer.self_distill_weight = weight
        torch.manual_seed(0)  # the same dropout in every forward
        return trainer.compute_loss(model, dict(batch))

    torch.manual_seed(0)
    student = model(**batch)
    with torch.no_grad():
        torch.manual_seed(0)
        distance = output_distance(student, teacher(**batch))
    assert distance > 0  # training moved the model away from its warm-up state
    torch.testing.assert_close(loss(1.0) - loss(0.0), distance)
    with pytest.raises(ValueError, match="finite number ≥ 0"):
        RankDynaTrainer(model=wrapped_model(), self_distill_weight=-1.0,
                        args=TrainingArguments(output_dir=str(tmp_path / "x"), report_to=[], use_cpu=True))


def test_the_options_reach_the_trainer_from_the_command_line(tmp_path, tiny_glue_model, glue_dir, monkeypatch):
    import json

    from peft_rankdyna.jobs import runner
    from peft_rankdyna.jobs.cli import main
    from peft_rankdyna.jobs.settings import CompressSettings

    built = []

    class Recorded(RankDynaTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(runner, "RankDynaTrainer", Recorded)
    out = tmp_path / "run"
    assert main(["compress", "--model", tiny_glue_model, "--task", "mrpc", "--glue-dir", glue_dir, "--output", str(out),
                 "--max-train-samples", "64", "--max-eval-samples", "32", "--max-steps", "12", "--max-seq-length", "32",
                 "--tinit", "3", "--tfinal", "4", "--delta-t", "2", "--final-lr-restart", "--self-distill-weight",
                 "0.5", "--eval-steps", "6", "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["final_lr_restart"] and results["settings"]["self_distill_weight"] == 0.5
    assert [(p["round"], p["step"]) for p in results["curve"]] == [(0, 0), (0, 6), (0, 12)]
    assert "accuracy" in results["curve"][-1]
    (trainer,) = built
    assert trainer.final_lr_restart and trainer.self_distill_weight == 0.5 and trainer._self_teacher is not None
    assert trainer.lr_scheduler.lr_lambdas[0](12 - 4) == 0.0  # the restart, where the final phase begins
    with pytest.raises(ValueError, match="shape one RankDyna round"):
        CompressSettings(model=tiny_glue_model, task="mrpc", output_dir=str(tmp_path / "o"), method="fwsvd",
                         final_lr_restart=True)
