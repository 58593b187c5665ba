import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import tiny_batch, tiny_model, trained_model, word_tokenizer
from torch import nn
from transformers import BertForSequenceClassification, BertTokenizerFast

import peft_rankdyna.compact as compact_module
from peft_rankdyna import AutoCompactModel
from peft_rankdyna.allocator import round_to_multiple
from peft_rankdyna.budget import break_even_rank, matrix_cost
from peft_rankdyna.compact import BiasOnly, LowRankLinear, truncate
from peft_rankdyna.layer import RankDynaLayer


def test_truncate_picks_the_cheapest_form_and_keeps_the_function():
    layer = RankDynaLayer(nn.Linear(20, 12), "default")
    x = torch.randn(5, 20)
    for keep_count, form in [(0, BiasOnly), (3, LowRankLinear), (12, nn.Linear)]:
        keep = torch.arange(12) < keep_count
        layer.set_mask(keep)
        module = layer.unload_and_optionally_merge_module(merge=True)
        assert type(module) is form
        torch.testing.assert_close(module(x), layer(x), atol=1e-6, rtol=1e-5)


def test_truncate_without_bias():
    U, s, Vt = torch.randn(6, 4), torch.rand(4), torch.randn(4, 5)
    module = truncate(U, s, Vt, torch.tensor([True, False, False, False]), None)
    assert isinstance(module, LowRankLinear) and module.up.bias is None
    assert torch.equal(BiasOnly(5, 6, bias=False)(torch.randn(2, 5)), torch.zeros(2, 6))


def test_merge_equals_the_masked_model_and_is_plain_transformers():
    model = trained_model()
    batch = tiny_batch()
    with torch.no_grad():
        expected = model(**batch).logits
    ranks = model.base_model.ranks()
    assert 0 in ranks.values()  # the budget is tight enough that some matrix drops to bias-only
    compact = model.merge_and_unload()
    assert isinstance(compact, BertForSequenceClassification)
    assert not any(isinstance(m, RankDynaLayer) for m in compact.modules())
    assert compact.rankdyna_ranks == ranks
    with torch.no_grad():
        assert (compact(**batch).logits - expected).abs().max() <= 1e-5


def test_unload_without_merge_is_refused():
    with pytest.raises(ValueError, match="merge_and_unload"):
        trained_model(steps=6).unload()


def test_save_and_load_in_a_fresh_process(tmp_path):
    compact = trained_model().merge_and_unload()
    batch = tiny_batch()
    with torch.no_grad():
        expected = compact(**batch).logits
    compact.save_pretrained(tmp_path / "compact", tokenizer=word_tokenizer(tmp_path))
    files = sorted(p.name for p in (tmp_path / "compact").iterdir())
    assert {"config.json", "model.rankdyna.safetensors", "tokenizer.json", "vocab.txt"} <= set(files)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folders left
    torch.save(batch, tmp_path / "batch.pt")
    script = textwrap.dedent(f"""
        import torch, peft_rankdyna
        model = peft_rankdyna.AutoCompactModel.from_pretrained({str(tmp_path / "compact")!r})
        with torch.no_grad():
            torch.save((model(**torch.load({str(tmp_path / "batch.pt")!r})).logits, repr(model)),
                       {str(tmp_path / "out.pt")!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    logits, architecture = torch.load(tmp_path / "out.pt")
    assert architecture == repr(compact)
    torch.testing.assert_close(logits, expected, atol=0, rtol=0)


def test_plain_transformers_refuses_a_compact_folder(tmp_path):
    trained_model(steps=6).merge_and_unload().save_pretrained(tmp_path / "c")
    for loader, says in [("AutoModelForSequenceClassification", "import peft_rankdyna and load with"),
                         ("BertForSequenceClassification", "model.safetensors")]:
        script = f"import transformers; transformers.{loader}.from_pretrained({str(tmp_path / 'c')!r})"
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert result.returncode != 0, f"{loader} loaded a compact folder without peft_rankdyna"
        assert says in result.stderr


def test_weights_that_disagree_with_the_ranks_name_the_tensor(tmp_path):
    trained_model(steps=6).merge_and_unload().save_pretrained(tmp_path / "c")
    config_path = tmp_path / "c" / "config.json"
    config = json.loads(config_path.read_text())
    name = next(n for n, r in config["rankdyna"]["ranks"].items() if 0 < r < 10)
    config["rankdyna"]["ranks"][name] += 1
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"tensor '{name}\.down\.weight' has shape"):
        AutoCompactModel.from_pretrained(tmp_path / "c")


def test_truncated_weights_and_newer_format_are_clear_errors(tmp_path):
    trained_model(steps=6).merge_and_unload().save_pretrained(tmp_path / "c")
    weights = tmp_path / "c" / "model.rankdyna.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="unreadable or truncated"):
        AutoCompactModel.from_pretrained(tmp_path / "c")
    config_path = tmp_path / "c" / "config.json"
    config = json.loads(config_path.read_text())
    config["rankdyna"]["format_version"] = 99
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="format version 99"):
        AutoCompactModel.from_pretrained(tmp_path / "c")


def test_crash_while_saving_leaves_the_previous_folder_intact(tmp_path, monkeypatch):
    compact = trained_model(steps=6).merge_and_unload()
    compact.save_pretrained(tmp_path / "c")
    before = (tmp_path / "c" / "model.rankdyna.safetensors").read_bytes()

    def crash(state, path, metadata=None):
        with open(path, "wb") as handle:
            handle.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(compact_module, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        compact.save_pretrained(tmp_path / "c")
    assert (tmp_path / "c" / "model.rankdyna.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    AutoCompactModel.from_pretrained(tmp_path / "c")


def test_round_to_multiple_keeps_budget_and_respends():
    torch.manual_seed(0)
    shapes = {"a": (32, 32), "b": (96, 32), "c": (32, 96), "d": (8, 8)}
    scores = {n: torch.rand(min(s)) for n, s in shapes.items()}
    masks = {n: torch.arange(min(s)) < r for (n, s), r in zip(shapes.items(), [13, 7, 22, 8])}
    budget = sum(matrix_cost(int(m.sum()), *shapes[n]) for n, m in masks.items())
    rounded = round_to_multiple(scores, shapes, masks, budget, 8)
    ranks = {n: int(m.sum()) for n, m in rounded.items()}
    spent = sum(matrix_cost(r, *shapes[n]) for n, r in ranks.items())
    assert spent <= budget
    for name, rank in ranks.items():
        assert rank % 8 == 0 or rank >= break_even_rank(*shapes[name])
    assert ranks["d"] == 8  # stored dense: untouched
    cheapest_chunk = min(matrix_cost(8, *s) for n, s in shapes.items() if n != "d")
    assert budget - spent < cheapest_chunk  # what was freed was spent again where it fit


def test_merge_with_rank_multiple(tmp_path):
    model = trained_model(rank_multiple=4)
    target = model.base_model.target_params()
    compact = model.merge_and_unload()
    for name, rank in compact.rankdyna_ranks.items():
        module = compact.get_submodule(name)
        assert rank % 4 == 0 or isinstance(module, nn.Linear)
    assert sum(matrix_cost(r, compact.get_submodule(n).out_features, compact.get_submodule(n).in_features)
               for n, r in compact.rankdyna_ranks.items()) <= target


def test_merge_a_saved_adapter(tmp_path):
    from peft_rankdyna.loading import merge_adapter

    tiny_model().save_pretrained(tmp_path / "base")
    model = trained_model()
    model.save_pretrained(tmp_path / "adapter")
    batch = tiny_batch()
    with torch.no_grad():
        expected = model(**batch).logits
        merged = merge_adapter(str(tmp_path / "adapter"), str(tmp_path / "base")).eval()
        torch.testing.assert_close(merged(**batch).logits, expected, atol=1e-5, rtol=0)
    with pytest.raises(FileNotFoundError, match="Base model"):
        merge_adapter(str(tmp_path / "adapter"), str(tmp_path / "nowhere"))


def test_merge_cli_writes_a_loadable_compact_folder(tmp_path):
    from peft_rankdyna.jobs.cli import main

    tiny_model().save_pretrained(tmp_path / "base")
    word_tokenizer(tmp_path / "base")
    BertTokenizerFast(vocab_file=str(tmp_path / "base" / "vocab.txt")).save_pretrained(tmp_path / "base")
    model = trained_model()
    model.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        expected = model(**tiny_batch()).logits
    assert main(["merge", str(tmp_path / "adapter"), str(tmp_path / "c"), "--base-model", str(tmp_path / "base")]) == 0
    loaded = AutoCompactModel.from_pretrained(tmp_path / "c")
    assert (tmp_path / "c" / "tokenizer.json").is_file()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**tiny_batch()).logits, expected, atol=1e-5, rtol=0)
