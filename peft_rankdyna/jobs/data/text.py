"""Plain text for language modelling: a file read whole, tokenised once, packed into blocks of equal length."""

from __future__ import annotations

import os
from typing import Any, Optional

import torch


def read_text(path: str) -> str:
    """The whole text of a UTF-8 file; a missing or empty file is a clear error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Text file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if not text.strip():
        raise ValueError(f"{path}: the file holds no text.")
    return text


def split_held_out(text: str, share: float) -> tuple[str, str]:
    """``text`` cut at a line boundary: the first lines, and the last ``share`` of its lines held out."""
    lines = text.splitlines(keepends=True)
    held = max(1, int(share * len(lines)))
    if held >= len(lines):
        raise ValueError("The text has too few lines to hold some out for validation: give --validation-texts.")
    return "".join(lines[:-held]), "".join(lines[-held:])


def encode(tokenizer: Any, text: str, chunk_lines: int = 2000) -> list[int]:
    """Token ids of ``text`` as one stream (no special tokens added), tokenised in chunks of whole lines."""
    lines = text.splitlines(keepends=True)
    ids: list[int] = []
    for start in range(0, len(lines), chunk_lines):
        # verbose=False: the stream is longer than the model's context on purpose, it is cut into blocks.
        ids += tokenizer("".join(lines[start:start + chunk_lines]), add_special_tokens=False,
                         verbose=False)["input_ids"]
    return ids


class PackedBlocks(torch.utils.data.Dataset):
    """A token stream cut into blocks of ``length`` tokens (the remainder dropped), each its own label sequence."""

    def __init__(self, ids: list[int], length: int, limit: Optional[int] = None) -> None:
        count = len(ids) // length if limit is None else min(limit, len(ids) // length)
        if count == 0:
            raise ValueError(f"The training text has {len(ids)} tokens, fewer than one block of {length}: give "
                             "more text or a smaller --max-seq-length.")
        self.blocks = torch.tensor(ids[: count * length]).view(count, length)

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        block = self.blocks[index]
        return {"input_ids": block, "attention_mask": torch.ones_like(block), "labels": block}
