"""Decoder language models: default targets (grouped-query attention included), the causal-LM objective,
its perplexity and collapse check, and the compact causal LM (round trip, generation with the KV cache)."""

import math

import pytest
import torch
from conftest import tiny_decoder
from peft import get_peft_model
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

from peft_rankdyna import AutoCompactModel, RankDynaConfig
from peft_rankdyna.jobs import CompressSettings, compress
from peft_rankdyna.jobs.objectives.causal_lm import check_lm_collapse, perplexity, unigram_perplexity

LLAMA_KINDS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize("config_cls, kinds", [
    (LlamaConfig, LLAMA_KINDS), (MistralConfig, LLAMA_KINDS), (Qwen2Config, LLAMA_KINDS),
    (Phi3Config, {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}),
])
def test_decoders_get_default_targets_and_start_as_the_dense_model(config_cls, kinds):
    model = tiny_decoder(config_cls)
    ids = torch.randint(1, 99, (2, 10))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    wrapped = get_peft_model(model, RankDynaConfig(task_type="CAUSAL_LM", total_step=10)).eval()
    layers = wrapped.base_model.rankdyna_layers()
    assert {name.rsplit(".", 1)[1] for name in layers} == kinds
    assert len(layers) == 2 * len(kinds) and not any("lm_head" in name for name in layers)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(input_ids=ids).logits, expected, atol=1e-4, rtol=1e-4)


def test_grouped_query_attention_factors_k_and_v_at_their_own_shape():
    wrapped = get_peft_model(tiny_decoder(), RankDynaConfig(task_type="CAUSAL_LM", total_step=10))
    layers = wrapped.base_model.rankdyna_layers()
    q, k = layers["model.layers.0.self_attn.q_proj"], layers["model.layers.0.self_attn.k_proj"]
    assert (q.out_features, q.in_features, q.initial_rank) == (32, 32, 32)
    assert (k.out_features, k.in_features, k.initial_rank) == (16, 32, 16)  # 2 KV heads of 8


def test_gpt2_conv1d_layers_are_refused_with_a_clear_error():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    with pytest.raises(ValueError, match=r"h\.0\.attn\.c_attn is a transformers Conv1D .*GPT-2-family models are not"):
        get_peft_model(model, RankDynaConfig(task_type="CAUSAL_LM", total_step=10))


# ----------------------------------------------------------------------------- perplexity
class Uniform(torch.nn.Module):
    """A 'language model' giving every token the same probability: its perplexity is the vocabulary size."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab, self.weight = vocab, torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):
        return type("Out", (), {"logits": torch.zeros(*input_ids.shape, self.vocab) + self.weight})()


def test_a_uniform_model_has_the_vocabulary_size_as_perplexity():
    ids = torch.randint(0, 37, (301,)).tolist()
    assert perplexity(Uniform(37), ids, window=16, step=5) == pytest.approx(37.0, rel=1e-6)


def test_a_window_as_long_as_the_text_scores_every_token_once_from_its_full_context():
    model, ids = tiny_decoder(), torch.randint(1, 99, (40,)).tolist()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
    expected = math.exp(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:])).item())
    assert perplexity(model, ids, window=64, step=32) == pytest.approx(expected, rel=1e-5)


def test_the_sliding_window_scores_each_token_once_whatever_the_batching():
    model, ids = tiny_decoder(), torch.randint(1, 99, (97,)).tolist()
    one = perplexity(model, ids, window=16, step=8, batch_size=1)
    assert perplexity(model, ids, window=16, step=8, batch_size=5) == pytest.approx(one, rel=1e-6)
    # Brute force: token t (t ≥ 1) predicted from the window that first covers it, as the docstring says.
    nll, covered = 0.0, 1
    for begin in range(0, len(ids), 8):
        end = min(begin + 16, len(ids))
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids[begin:end]])).logits[0]
        for t in range(covered, end):
            nll -= torch.log_softmax(logits[t - begin - 1], -1)[ids[t]].item()
        covered = end
        if end == len(ids):
            break
    assert one == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-5)


def test_unigram_perplexity_of_a_known_distribution():
    # counts 0:2, 1:1 of 3 tokens, add-one over 2 symbols: p(0) = 3/5, p(1) = 2/5.
    assert unigram_perplexity([0, 0, 1], [0, 1], 2) == pytest.approx(1 / math.sqrt(0.6 * 0.4))


def test_a_language_model_no_better_than_unigrams_or_not_finite_collapsed():
    assert check_lm_collapse(50.0, 40.0).collapsed and check_lm_collapse(float("nan"), 40.0).collapsed
    assert not check_lm_collapse(30.0, 40.0).collapsed


# ----------------------------------------------------------------------------- the compact causal LM
def test_the_compact_causal_lm_round_trips_and_generates_with_its_cache(tmp_path):
    model = tiny_decoder(tie_word_embeddings=True)
    wrapped = get_peft_model(model, RankDynaConfig(task_type="CAUSAL_LM", target_budget=0.4, total_step=4, tinit=1,
                                                   tfinal=1, deltaT=1))
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=1e-3)
    ids = torch.randint(1, 99, (2, 16))
    for step in range(4):
        wrapped(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        wrapped.base_model.update_and_allocate(step)
        optimizer.zero_grad()
    merged = wrapped.eval().merge_and_unload()
    assert any(rank < 16 for rank in merged.rankdyna_ranks.values())
    with torch.no_grad():
        expected = merged(input_ids=ids).logits
    merged.save_pretrained(tmp_path / "compact")
    loaded = AutoCompactModel.from_pretrained(tmp_path / "compact")
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()  # tied again
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)
    prompt = {"input_ids": ids[:1, :5], "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    cached = loaded.generate(**prompt, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
    uncached = loaded.generate(**prompt, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, merged.generate(**prompt, max_new_tokens=8, do_sample=False, pad_token_id=0))


@pytest.mark.parametrize("method, basis", [("rankdyna", "svd"), ("svd", "svd"), ("rankdyna", "whitened")])
def test_compress_trains_a_causal_lm_and_scores_the_saved_model_by_perplexity(tmp_path, tiny_lm_folder, method,
                                                                              basis):
    text = tmp_path / "train.txt"
    text.write_text("".join(f"the cat number {i} sat on the mat and looked at dog {i % 7} .\n" for i in range(120)))
    settings = CompressSettings(model=tiny_lm_folder, task=None, output_dir=str(tmp_path / "out"), budget=0.5,
                                method=method, objective="causal-lm", texts=str(text), max_steps=6, batch_size=4,
                                max_seq_length=32, learning_rate=1e-3, init_basis=basis, calibration_samples=8,
                                rankdyna={"tinit": 1, "tfinal": 1, "deltaT": 1} if method == "rankdyna" else {},
                                show_progress=False)
    results = compress(settings)
    assert results["train_steps"] == 6 and results["perplexity_stride"] == 16
    value, unigram = results["metrics"]["perplexity"], results["unigram_perplexity"]
    assert math.isfinite(value) and value > 1 and results["metrics"]["loss"] == pytest.approx(math.log(value))
    assert results["collapse"]["collapsed"] == (value >= unigram)  # a tiny random LM after 6 steps may well be
    assert results["collapse"]["details"]["unigram_perplexity"] == unigram
    loaded = AutoCompactModel.from_pretrained(tmp_path / "out" / "compact")
    from peft_rankdyna.jobs.data.text import encode, read_text, split_held_out
    from peft_rankdyna.loading import load_tokenizer

    held = split_held_out(read_text(str(text)), 0.05)[1]
    ids = encode(load_tokenizer(tiny_lm_folder), held)
    assert perplexity(loaded, ids, 32) == pytest.approx(results["metrics"]["perplexity"], rel=1e-5)


def test_a_gguf_path_is_its_folder_and_file_name(tmp_path):
    settings = CompressSettings(model=str(tmp_path / "weights.Q4_1.gguf"), task=None, output_dir=str(tmp_path / "o"),
                                objective="causal-lm")
    assert (settings.model, settings.gguf_file) == (str(tmp_path), "weights.Q4_1.gguf")


def test_the_causal_lm_objective_needs_plain_text(tmp_path, tiny_lm_folder):
    with pytest.raises(ValueError, match="give --texts FILE"):
        compress(CompressSettings(model=tiny_lm_folder, task=None, output_dir=str(tmp_path / "o"),
                                  objective="causal-lm"))


def test_a_whitened_init_basis_rebases_every_target_once(tmp_path, tiny_lm_folder, monkeypatch):
    from peft_rankdyna.model import RankDynaModel

    calls, original = [], RankDynaModel.rebase_factors

    def spy(self, transforms):
        calls.append(sorted(transforms))
        original(self, transforms)

    monkeypatch.setattr(RankDynaModel, "rebase_factors", spy)
    text = tmp_path / "train.txt"
    text.write_text("".join(f"a line of text number {i} about the weather .\n" for i in range(60)))
    compress(CompressSettings(model=tiny_lm_folder, task=None, output_dir=str(tmp_path / "out"), budget=0.5,
                              objective="causal-lm", texts=str(text), max_steps=3, batch_size=4, max_seq_length=32,
                              init_basis="whitened", calibration_samples=8, show_progress=False,
                              rankdyna={"tinit": 1, "tfinal": 1, "deltaT": 1}))
    layers = 2 * len(LLAMA_KINDS)
    assert len(calls) == 1 and len(calls[0]) == layers
