"""Export validation: the ONNX graph against the PyTorch model on real tokenised text.

Optimum's own check uses random token ids and only warns when the tolerance is missed; a compact
graph is only shipped when it computes what the model computes on text like the user's, so this
check tokenises real sentence pairs at two batch sizes and two sequence lengths (short ones get
padded) and raises, naming the output and the difference, when any value is off by more than ``atol``.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import torch

from peft_rankdyna.loading import max_positions

# Real sentence pairs (paraphrase-style, as in MRPC/STS) so padding patterns look like real input.
SENTENCE_PAIRS = [
    ("The company said its quarterly profit rose sharply.", "Quarterly earnings at the firm increased a lot."),
    ("A man is playing a guitar on the stage.", "Someone performs music in front of an audience."),
    ("The cat slept.", "A dog barked loudly at the passing mail carrier all afternoon."),
    ("Shares fell 3 percent in early trading on Tuesday after the report.", "Stocks dropped."),
    ("She booked a flight to Lisbon for the conference next spring.", "Her trip to Portugal is for work."),
    ("The bill passed the Senate by a narrow margin of 51 to 49 votes.", "Lawmakers approved the measure."),
    ("Heavy rain caused flooding in several low-lying neighbourhoods.", "It was sunny all week."),
    ("The museum reopened after a two-year renovation.", "Visitors can again see the museum's collection."),
    ("Researchers found no link between the drug and heart problems.", "The medicine is safe for the heart."),
    ("He didn't like the movie at all.", "He loved the film."),
    ("The recipe needs two cups of flour, one egg and a pinch of salt.", "You need flour, an egg and salt."),
    ("Traffic on the bridge was stopped for three hours after the accident.", "The crash closed the bridge."),
    ("The orchestra will tour Asia in the autumn.", "The band plays in Japan and Korea in October."),
    ("Prices of fresh vegetables climbed for the fourth straight month.", "Vegetables keep getting pricier."),
    ("The software update fixes a security flaw in the login page.", "A patch closes a hole in sign-in."),
    ("Nobody knows where the missing painting is today.", "The painting's location is unknown."),
]
SHAPES = ((1, 16), (8, 128))  # (batch size, sequence length)


class ExportValidationError(ValueError):
    """An exported graph computes something other than the model it was exported from."""


def tokenised_inputs(tokenizer: Any, batch_size: int, seq_len: int,
                     input_names: Sequence[str]) -> dict[str, np.ndarray]:
    """``batch_size`` real sentence pairs padded/truncated to ``seq_len``, as int64 arrays for ``input_names``."""
    pairs = [SENTENCE_PAIRS[i % len(SENTENCE_PAIRS)] for i in range(batch_size)]
    encoded = tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding="max_length", truncation=True,
                        max_length=seq_len, return_tensors="np")
    missing = [name for name in input_names if name not in encoded]
    if missing:
        raise ValueError(f"The tokenizer gives no {missing}; the graph needs {list(input_names)}.")
    return {name: encoded[name].astype(np.int64) for name in input_names}


@torch.no_grad()
def reference_outputs(model: torch.nn.Module, feeds: dict[str, np.ndarray], names: Sequence[str]) -> list[np.ndarray]:
    """The PyTorch model's outputs ``names`` (ONNX output names are the model's output keys) in fp32."""
    outputs = model(**{name: torch.from_numpy(value) for name, value in feeds.items()})
    return [outputs[name].float().numpy() for name in names]


def max_differences(session: Any, model: torch.nn.Module, tokenizer: Any,
                    shapes: Sequence[tuple[int, int]] = SHAPES) -> dict[str, float]:
    """Largest |ONNX − PyTorch| per output name over all ``shapes`` of real tokenised input."""
    input_names = [i.name for i in session.get_inputs()]
    output_names = [o.name for o in session.get_outputs()]
    worst = dict.fromkeys(output_names, 0.0)
    for batch_size, seq_len in shapes:
        seq_len = min(seq_len, max_positions(model.config))
        feeds = tokenised_inputs(tokenizer, batch_size, seq_len, input_names)
        actual = session.run(None, feeds)
        for name, got, want in zip(output_names, actual, reference_outputs(model, feeds, output_names)):
            if got.shape != want.shape:
                raise ExportValidationError(f"Output {name!r} has shape {got.shape}, the model gives {want.shape} "
                                            f"(batch {batch_size}, sequence {seq_len}).")
            worst[name] = max(worst[name], float(np.abs(got.astype(np.float32) - want).max()))
    return worst


def validate(session: Any, model: torch.nn.Module, tokenizer: Any, atol: float, label: str,
             shapes: Sequence[tuple[int, int]] = SHAPES) -> dict[str, float]:
    """:func:`max_differences`, raising :class:`ExportValidationError` when one exceeds ``atol``."""
    worst = max_differences(session, model, tokenizer, shapes)
    for name, difference in worst.items():
        if not difference <= atol:  # also catches NaN
            raise ExportValidationError(
                f"{label}: output {name!r} differs from PyTorch by up to {difference:.3g} (tolerance {atol:g}) on "
                f"real tokenised input at (batch, sequence) {list(shapes)}; the graph was not kept."
            )
    return worst


def agreement(candidate: Any, reference: Any, batches: Iterable[dict[str, np.ndarray]],
              output: str) -> dict[str, Any]:
    """How closely a reduced-precision graph (fp16, int8) follows its fp32 graph on the output ``output``.

    ``agreement``: the share of examples whose predicted class is the fp32 graph's, for a classifier's
    ``logits`` (``None`` for every other output: regression scores, hidden states, embeddings);
    ``correlation``: Pearson over all output values (the check for outputs without classes);
    ``max_abs_diff``: the largest |difference|.
    """
    same, total, worst, has_classes = 0, 0, 0.0, output == "logits"
    got, want = [], []
    for feeds in batches:
        low = candidate.run([output], feeds)[0].astype(np.float32)
        full = reference.run([output], feeds)[0].astype(np.float32)
        worst = max(worst, float(np.abs(low - full).max()))
        has_classes = has_classes and full.ndim == 2 and full.shape[-1] > 1
        same += int((low.argmax(-1) == full.argmax(-1)).sum()) if has_classes else 0
        total += full.shape[0]
        got.append(low.ravel())
        want.append(full.ravel())
    values, references = np.concatenate(got), np.concatenate(want)
    spread = float(values.std() * references.std())
    correlation = float(np.mean((values - values.mean()) * (references - references.mean())) / spread) if spread else None
    return {"examples": total, "output": output, "agreement": same / total if has_classes and total else None,
            "correlation": correlation, "max_abs_diff": worst}
