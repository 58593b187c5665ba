"""The single-class guard: a collapsed model is reported as such, in the results and the summary."""

import numpy as np
import pytest

from peft_rankdyna.jobs.collapse import check_collapse
from peft_rankdyna.jobs.data.glue import get_task
from peft_rankdyna.jobs.data.labelled import compute_metrics
from peft_rankdyna.jobs.results import format_results

COLA, MRPC, STSB = get_task("cola"), get_task("mrpc"), get_task("stsb")
LABELS = np.array([1] * 70 + [0] * 30)


def _check(task, logits, labels=LABELS):
    metrics = compute_metrics(task, logits, labels)
    return check_collapse(logits, labels, metrics, lambda p, y: compute_metrics(task, p, y), task.is_regression)


def _logits(predicted):
    logits = np.zeros((len(predicted), 2))
    logits[np.arange(len(predicted)), predicted] = 1.0
    return logits


def test_one_label_for_every_example_is_a_collapse():
    report = _check(COLA, _logits(np.ones(100, dtype=int)))
    assert report.collapsed and report.top_class_share == 1.0
    assert report.majority_baseline == {"matthews_correlation": 0.0}
    assert "100.0% of the dev examples the same label (class 1)" in report.message


def test_a_model_no_better_than_the_majority_class_is_a_collapse():
    predicted = np.array([1] * 70 + [0] * 30)
    rng = np.random.default_rng(2)
    predicted = predicted[rng.permutation(100)]  # the right label shares, at random: Matthews 0.0 for this seed
    report = _check(COLA, _logits(predicted))
    assert report.collapsed and report.top_class_share == 0.7 and "no dev metric beats" in report.message


def test_a_model_that_learned_is_not_a_collapse():
    predicted = LABELS.copy()
    predicted[:15] = 0  # 85% accuracy, both classes predicted
    report = _check(MRPC, _logits(predicted))
    assert not report.collapsed and report.message == ""
    assert report.majority_baseline["accuracy"] == 0.7 and report.majority_baseline["f1"] == pytest.approx(0.8235, abs=1e-4)


def test_a_constant_regression_is_a_collapse():
    labels = np.linspace(0, 5, 50)
    assert _check(STSB, np.full((50, 1), 2.5) + 1e-6 * np.arange(50)[:, None], labels).collapsed
    assert not _check(STSB, labels[:, None] + np.random.default_rng(0).normal(0, 0.5, (50, 1)), labels).collapsed


def test_the_summary_says_so_loudly():
    results = {"settings": {"task": "cola", "budget": 0.5, "method": "rankdyna"}, "train_steps": 10,
               "metrics": {"matthews_correlation": 0.0}, "model_params_before": 2, "model_params_after": 1,
               "wall_time_s": 1.0, "collapse": _check(COLA, _logits(np.ones(100, dtype=int))).to_dict()}
    assert "WARNING: the model gives 100.0% of the dev examples the same label" in format_results(results)
    results["collapse"] = _check(COLA, _logits(LABELS)).to_dict()
    assert "WARNING" not in format_results(results)
