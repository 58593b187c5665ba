"""Language modelling: next-token cross-entropy on plain text, scored by perplexity on held-out text.

``rankdyna compress --objective causal-lm --texts F [--validation-texts F]``: the training text is
tokenised as one stream and packed into blocks of ``--max-seq-length`` tokens; the loss (and so
RankDyna's importance) is the model's own next-token cross-entropy. The dev metric is the perplexity
of the validation text by a sliding window (:func:`perplexity`). A model is reported as collapsed
when its perplexity is not finite or no better than the unigram distribution of the training tokens
(what a model that ignores all context can reach).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, default_data_collator

from ...loading import require_model_folder
from ..collapse import CollapseReport
from ..data.text import PackedBlocks, encode, read_text, split_held_out
from .base import Objective, Scores

HELD_OUT = 0.05  # share of the training text's lines kept for validation when no validation text is given


class CausalLM(Objective):
    """Train a causal LM on plain text; validation perplexity, unigram collapse check."""

    name = "causal-lm"
    task_type = "CAUSAL_LM"
    export_task = "text-generation-with-past"
    methods = ("rankdyna", "svd", "fwsvd", "asvd", "svdllm")
    dense_reference = True  # dense fine-tuning on the same text: it lowers the perplexity too
    first_round = False  # the baselines truncate the pre-trained model, then fine-tune the factors

    def check(self) -> None:
        if not self.settings.texts:
            raise ValueError("The causal-lm objective learns from plain text: give --texts FILE.")
        if self.settings.text_columns:
            raise ValueError("The causal-lm objective reads plain text files; drop --text-columns.")
        super().check()

    def read_data(self) -> None:
        settings = self.settings
        train = read_text(settings.texts)
        if settings.validation_texts:
            self.train_text, self.validation_text = train, read_text(settings.validation_texts)
        else:
            self.train_text, self.validation_text = split_held_out(train, HELD_OUT)

    def prepare(self, tokenizer: Any) -> None:
        settings = self.settings
        train_ids = encode(tokenizer, self.train_text)
        validation_ids = encode(tokenizer, self.validation_text)
        if settings.max_eval_samples:
            validation_ids = validation_ids[: settings.max_eval_samples * settings.max_seq_length]
        self.validation_ids = validation_ids
        self.train_dataset = PackedBlocks(train_ids, settings.max_seq_length, settings.max_train_samples)
        self.collator = default_data_collator
        self.unigram = unigram_perplexity(self.train_dataset.blocks.view(-1).tolist(), validation_ids,
                                          len(tokenizer))

    def load_model(self, path: str) -> nn.Module:
        require_model_folder(path)
        settings = self.settings
        gguf = {"gguf_file": settings.gguf_file} if settings.gguf_file and path == settings.model else {}
        return AutoModelForCausalLM.from_pretrained(path, **gguf)

    def score(self, model: nn.Module) -> Scores:
        window = self.settings.max_seq_length
        value = perplexity(model, self.validation_ids, window, stride(window))
        return Scores({"perplexity": value, "loss": math.log(value) if value > 0 else float("nan")},
                      check_lm_collapse(value, self.unigram).to_dict())

    def describe(self) -> dict[str, Any]:
        return {"train_tokens": int(self.train_dataset.blocks.numel()), "validation_tokens": len(self.validation_ids),
                "perplexity_window": self.settings.max_seq_length,
                "perplexity_stride": stride(self.settings.max_seq_length), "unigram_perplexity": self.unigram}


def stride(window: int) -> int:
    """The sliding window's step: half a window, so every token but the first window's has ≥ window/2 context."""
    return max(1, window // 2)


@torch.no_grad()
def perplexity(model: nn.Module, ids: list[int], window: int, step: Optional[int] = None,
               batch_size: int = 8) -> float:
    """exp(mean next-token NLL) over ``ids``, each token scored once, in a window of ≤ ``window`` tokens.

    Windows start every ``step`` tokens (default :func:`stride`); a window scores only the tokens
    the previous one did not (the first window all but its first token), so each token after the
    first window is predicted from at least ``window − step`` tokens of context. Windows of equal
    length run ``batch_size`` at a time.
    """
    step = step or stride(window)
    if len(ids) < 2:
        raise ValueError("Perplexity needs at least two validation tokens.")
    if not 0 < step < window:
        raise ValueError(f"The stride must be in (0, window={window}), got {step}.")
    spans, previous_end, begin = [], 0, 0
    while previous_end < len(ids):
        end = min(begin + window, len(ids))
        spans.append((begin, end, end - max(previous_end, begin + 1)))  # (window, tokens newly scored)
        previous_end, begin = end, begin + step
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(spans), batch_size):
        by_length = defaultdict(list)  # a batch stacks windows of one length (only the last ones are shorter)
        for span in spans[start:start + batch_size]:
            by_length[span[1] - span[0]].append(span)
        for group in by_length.values():
            inputs = torch.tensor([ids[b:e] for b, e, _ in group], device=device)
            logits = model(input_ids=inputs).logits[:, :-1].float()
            nll = F.cross_entropy(logits.transpose(1, 2), inputs[:, 1:], reduction="none")
            for row, (_, _, scored) in zip(nll, group):
                total += float(row[-scored:].sum())
                count += scored
    return math.exp(total / count)


def unigram_perplexity(train_ids: list[int], validation_ids: list[int], vocab_size: int) -> float:
    """Perplexity of ``validation_ids`` under the training tokens' unigram distribution (add-one smoothed)."""
    counts, total = Counter(train_ids), len(train_ids) + vocab_size
    nll = -sum(math.log((counts[token] + 1) / total) for token in validation_ids) / len(validation_ids)
    return math.exp(nll)


def check_lm_collapse(value: float, unigram: float) -> CollapseReport:
    """A language model whose perplexity is not finite, or no better than the unigram distribution, collapsed."""
    collapsed = not math.isfinite(value) or value >= unigram
    message = (f"validation perplexity {value:.4g} is not below the unigram distribution's {unigram:.4g}: the model "
               "predicts no better than ignoring all context" if collapsed else "")
    return CollapseReport(collapsed, message=message, details={"perplexity": value, "unigram_perplexity": unigram})
