"""Failures that once passed without a word: each test here failed before its fix (see the CHANGELOG)."""

import csv
import json
import os
import warnings

import pytest
import torch
from conftest import REPO_ROOT, tiny_batch, tiny_model
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn

from peft_rankdyna import RankDynaConfig, RankDynaLayer
from peft_rankdyna.jobs import CompressSettings, compress
from peft_rankdyna.jobs.data.files import load_files, read_table
from peft_rankdyna.layer import matched_step_scale

OLD_ADAPTER = os.path.join(REPO_ROOT, "tests", "fixtures", "adapter_before_step_scale")


# ----------------------------------------------------------------------------- adapters and the step scale
def test_an_adapter_saved_before_the_step_scale_loads_as_it_was_trained():
    expected = load_file(os.path.join(OLD_ADAPTER, "expected.safetensors"))
    with pytest.warns(UserWarning, match="saved before `factor_step_scale` existed"):
        model = PeftModel.from_pretrained(tiny_model("bert"), OLD_ADAPTER).eval()
    layers = model.base_model.rankdyna_layers()
    assert {layer.factor_step_scale for layer in layers.values()} == {1.0}
    for name, layer in layers.items():
        torch.testing.assert_close(layer.dense_weight(), expected[f"{name}.weight"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(model(**tiny_batch()).logits, expected["logits"], atol=1e-5, rtol=1e-5)


def test_the_step_scale_stays_exact_fp32_when_the_model_is_cast():
    layer = RankDynaLayer(nn.Linear(24, 16), "default", factor_step_scale="matched")
    scale = layer.factor_step_scale
    layer.to(torch.bfloat16)
    buffer = layer.rankdyna_step_scale["default"]
    assert layer.rankdyna_U["default"].dtype == torch.bfloat16
    assert buffer.dtype == torch.float32 and buffer.item() == pytest.approx(scale, rel=1e-7)
    assert torch.tensor(scale).to(torch.bfloat16).item() != pytest.approx(scale, rel=1e-5)  # what bf16 would do
    again = RankDynaLayer(nn.Linear(24, 16), "default", factor_step_scale=2.0)
    state = {key: value for key, value in layer.state_dict().items() if key != "base_layer.weight"}
    again.load_state_dict(state, strict=False)
    assert again.factor_step_scale == pytest.approx(scale, rel=1e-7)  # the loaded value, not the one built with


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -1.0, 0.0])
def test_a_non_finite_or_non_positive_step_scale_is_refused(bad):
    with pytest.raises(ValueError, match="finite number > 0"):
        RankDynaConfig(factor_step_scale=bad)


def test_matched_step_scale_of_a_known_matrix():
    weight = 3.0 * torch.eye(16, 24)  # ‖W‖_F = 3·4 = 12
    assert matched_step_scale(weight) == pytest.approx((16 * 24) ** 0.5 / (12 * (16 + 24) ** 0.5))


def test_deleting_the_adapter_is_refused_and_the_model_still_works():
    model = get_peft_model(tiny_model("bert"), RankDynaConfig(task_type="SEQ_CLS", total_step=10)).eval()
    before = model(**tiny_batch()).logits
    with pytest.raises(ValueError, match="cannot delete adapter 'default'"):
        model.delete_adapter("default")
    torch.testing.assert_close(model(**tiny_batch()).logits, before)


def test_every_per_adapter_container_is_registered_with_peft():
    layer = RankDynaLayer(nn.Linear(24, 16), "default")
    containers = {name for name, module in layer.named_children()
                  if isinstance(module, (nn.ParameterDict, nn.ModuleDict)) or "default" in getattr(module, "keys", list)()}
    assert containers == set(layer.adapter_layer_names + layer.other_param_names)


# ----------------------------------------------------------------------------- your own files
def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_a_tsv_quote_is_text_and_never_merges_rows(tmp_path):
    rows = ['say "hi\t1', 'a "quoted" word\t0', '"starts with a quote\t1', 'plain\t0', 'last "one\t1']
    path = _write(tmp_path / "d.tsv", "text\tlabel\n" + "\n".join(rows) + "\n")
    table = read_table(path)
    assert [row["text"] for row in table.rows] == [row.split("\t")[0] for row in rows]
    assert table.lines == [2, 3, 4, 5, 6]


def test_a_csv_field_that_runs_over_lines_is_an_error_naming_its_line(tmp_path):
    path = _write(tmp_path / "d.csv", 'text,label\nfine,1\n"unclosed,0\nmore,1\n')
    with pytest.raises(ValueError, match=r"d.csv:3: a quoted field runs over"):
        read_table(path)


def test_csv_quoting_still_works(tmp_path):
    path = tmp_path / "d.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["text", "label"], ['a, "b"', "1"], ["c", "0"]])
    assert [row["text"] for row in read_table(str(path)).rows] == ['a, "b"', "c"]


@pytest.mark.parametrize("row", ["only one field", "a,b,c"])
def test_a_csv_row_with_another_number_of_fields_is_an_error(tmp_path, row):
    path = _write(tmp_path / "d.csv", f"text,label\nfine,1\n{row}\n")
    with pytest.raises(ValueError, match=r"d.csv:3: \d fields, (fewer|more) than the header's 2"):
        read_table(path)


def test_a_json_line_without_the_label_is_an_error_naming_the_line(tmp_path):
    path = _write(tmp_path / "d.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n{"text": "c", "label": 0}\n')
    with pytest.raises(ValueError, match=r"d.jsonl:2: no 'label' key"):
        load_files(path, path)


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_a_non_finite_regression_label_is_an_error(tmp_path, bad):
    path = _write(tmp_path / "d.csv", f"text,label\na,1.5\nb,{bad}\nc,2.5\n")
    with pytest.raises(ValueError, match=rf"d.csv:3: label '{bad}' is not a number"):
        load_files(path, path)


# ----------------------------------------------------------------------------- the runner
def test_the_reported_metrics_are_those_of_the_saved_model_with_rank_rounding(tmp_path, tiny_glue_model):
    from peft_rankdyna import AutoCompactModel
    from peft_rankdyna.jobs.data.labelled import LabelledTask
    from peft_rankdyna.loading import load_tokenizer
    from peft_rankdyna.jobs.objectives.classification import evaluate

    rows = [f"word{i % 7} thing {i},{(i % 7) / 2 + 0.25 * (i % 3)}" for i in range(48)]  # regression: a continuous metric
    train = _write(tmp_path / "train.csv", "text,label\n" + "\n".join(rows) + "\n")
    dev = _write(tmp_path / "dev.csv", "text,label\n" + "\n".join(rows[:16]) + "\n")
    out = tmp_path / "out"
    settings = CompressSettings(model=tiny_glue_model, task=None, output_dir=str(out), budget=0.4, max_steps=6,
                                batch_size=8, max_seq_length=16, train_file=train, validation_file=dev,
                                rankdyna={"tinit": 1, "tfinal": 1, "deltaT": 1, "rank_multiple": 8},
                                show_progress=False)
    results = compress(settings)
    assert results["target_params_before_rounding"] != results["target_params_after"]  # rounding changed the model
    train_split, dev_split, task = load_files(train, dev)
    saved = AutoCompactModel.from_pretrained(out / "compact")
    metrics = evaluate(saved, load_tokenizer(str(out / "compact")), task, dev_split, 16)
    assert isinstance(task, LabelledTask)
    assert metrics == pytest.approx(results["metrics"], abs=1e-6)


def test_the_library_runner_runs_the_objective_it_is_given(tmp_path, tiny_glue_model):
    texts = _write(tmp_path / "t.txt", "\n".join(f"sentence number {i} about things" for i in range(40)))
    settings = CompressSettings(model=tiny_glue_model, task=None, output_dir=str(tmp_path / "o"), budget=0.5,
                                objective="embedding-distillation", texts=texts, max_steps=3, batch_size=8,
                                max_seq_length=16, rankdyna={"tinit": 1, "tfinal": 1, "deltaT": 1},
                                show_progress=False)
    results = compress(settings)
    assert set(results["metrics"]) == {"mean_cosine", "p5_cosine"} and results["validation_texts"] == 2
    assert results["collapse"]["collapsed"] is False
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert saved["settings"]["objective"] == "embedding-distillation"


def test_an_unknown_objective_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match="choose one of classification, embedding-distillation"):
        compress(CompressSettings(model=str(tmp_path), task="mrpc", output_dir=str(tmp_path / "o"), objective="lm"))


def test_a_sentence_transformers_module_we_do_not_compute_is_refused(tmp_path):
    from peft_rankdyna.pooling import read_pooling

    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    with pytest.raises(ValueError, match=r"module 'sentence_transformers.models.Dense' is not one RankDyna computes"):
        read_pooling(str(tmp_path))
    (tmp_path / "modules.json").write_text(json.dumps(modules[:2]))
    assert read_pooling(str(tmp_path)).mode == "mean"


def test_without_a_warm_up_the_first_step_does_not_raise_the_no_allocation_alarm():
    from conftest import wrapped_model

    model = wrapped_model(tinit=0, total_step=10)
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # The first step's forward: the allocation comes after the optimizer step.
        model(**tiny_batch(), labels=torch.tensor([0, 1, 0, 1])).loss.backward()
        model.base_model.update_and_allocate(0)
        model(**tiny_batch())
    forgotten = wrapped_model(tinit=0, total_step=10)
    forgotten.train()
    forgotten(**tiny_batch())
    with pytest.warns(UserWarning, match="2 training forward passes and no `update_and_allocate` call"):
        forgotten(**tiny_batch())


def test_scoring_while_training_does_not_change_the_training(tmp_path, tiny_glue_model, glue_dir):
    """The curve's scoring draws no random numbers from the run's stream (a DataLoader would): same model with
    and without ``eval_steps``."""
    def run(name, **options):
        settings = CompressSettings(model=tiny_glue_model, task="mrpc", glue_dir=glue_dir, output_dir=str(tmp_path / name),
                                    max_train_samples=64, max_eval_samples=32, max_steps=8, max_seq_length=32,
                                    rankdyna={"tinit": 2, "tfinal": 2, "deltaT": 2}, show_progress=False, **options)
        return compress(settings)

    plain, scored = run("plain"), run("scored", eval_steps=3)
    assert [p["step"] for p in scored["curve"]] == [0, 3, 6, 8]  # and after the last step
    assert scored["metrics"] == plain["metrics"] and scored["target_params_after"] == plain["target_params_after"]
    weights = [load_file(str(tmp_path / name / "compact" / "model.rankdyna.safetensors")) for name in ("plain", "scored")]
    for key, value in weights[0].items():
        torch.testing.assert_close(weights[1][key], value, rtol=0, atol=0)
