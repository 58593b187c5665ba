"""The texts of the embedding benchmark: what the students learn from, and the pool they are judged on.

    GLUE_DIR=../shared/data/glue python benchmarks/embedding_texts.py --wikitext ../shared/data/wikitext-2 --out runs/emb-texts

- ``train.txt``: every training sentence of SST-2, CoLA and MRPC (both MRPC columns) and the
  sentences of WikiText-2's ``valid.txt``, de-duplicated, in a seeded shuffled order (so the first
  N, ``--max-train-samples``, are a fair sample of all four sources);
- ``validation.txt``: :data:`VALIDATION_TEXTS` of those sentences (a seeded sample), taken out of
  the training text: what the runs are scored on while they train, and what options are chosen on;
- ``pool.txt``: text never trained on — the dev sentences of the same three tasks and the sentences
  of WikiText-2's ``test.txt``, de-duplicated — the pool the index measures search.

A sentence in both is dropped from the training text (compared case- and space-insensitively).
WikiText-2 is tokenised (``@,@`` for a thousands comma, spaces around punctuation); its paragraphs
are split into sentences at `` . `` and the tokenisation undone, so its sentences read like the
others; headings and sentences under :data:`MIN_WIKI_WORDS` words are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
from typing import Iterable

GLUE_TASKS = ("sst2", "cola", "mrpc")
VALIDATION_TEXTS = 2000
MIN_WIKI_WORDS = 5  # shorter WikiText pieces are list fragments and captions, not sentences
_UNSPLIT = [(" @,@ ", ","), (" @.@ ", "."), (" @-@ ", "-"), (" n't", "n't"), (" 's", "'s"), ("( ", "("), (" )", ")")]


def wiki_sentences(path: str) -> list[str]:
    """The sentences of a WikiText-2 file, detokenised; headings and short pieces left out."""
    sentences = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line or line.startswith("="):  # blank or a heading
                continue
            for piece in re.split(r"(?<= \.) ", line):
                if len(piece.split()) >= MIN_WIKI_WORDS:
                    sentences.append(detokenise(piece))
    return sentences


def detokenise(text: str) -> str:
    """Undo WikiText's tokenisation: joined numbers and contractions, no space before punctuation."""
    for old, new in _UNSPLIT:
        text = text.replace(old, new)
    return re.sub(r" ([.,;:!?])", r"\1", text)


def glue_sentences(glue_dir: str, split: str) -> list[str]:
    """Every sentence of the ``split`` of :data:`GLUE_TASKS` (all text columns)."""
    from peft_rankdyna.jobs.data.glue import get_task, load_glue

    return [text for task in GLUE_TASKS for column in load_glue(get_task(task), split, glue_dir).texts
            for text in column]


def key(text: str) -> str:
    """What two sentences must share to count as the same one."""
    return " ".join(text.lower().split())


def unique(texts: Iterable[str], leave_out: set[str] = frozenset()) -> list[str]:
    """``texts`` in order, each sentence once, none whose :func:`key` is in ``leave_out``."""
    seen, kept = set(leave_out), []
    for text in texts:
        if key(text) not in seen:
            seen.add(key(text))
            kept.append(text.strip())
    return kept


def write_texts(glue_dir: str, wikitext_dir: str, out: str) -> dict[str, int]:
    """Write ``train.txt``, ``validation.txt`` and ``pool.txt`` into ``out``; the counts, also in ``texts.json``."""
    pool = unique(glue_sentences(glue_dir, "dev") + wiki_sentences(os.path.join(wikitext_dir, "test.txt")))
    train = unique(glue_sentences(glue_dir, "train") + wiki_sentences(os.path.join(wikitext_dir, "valid.txt")),
                   leave_out={key(text) for text in pool})
    held = set(random.Random(0).sample(range(len(train)), VALIDATION_TEXTS))
    validation = [text for i, text in enumerate(train) if i in held]
    train = [text for i, text in enumerate(train) if i not in held]
    random.Random(1).shuffle(train)
    os.makedirs(out, exist_ok=True)
    files = {"train": train, "validation": validation, "pool": pool}
    for name, texts in files.items():
        with open(os.path.join(out, f"{name}.txt"), "w", encoding="utf-8") as handle:
            handle.write("\n".join(texts) + "\n")
    counts = {"train": len(train), "validation": len(validation), "pool": len(pool)}
    with open(os.path.join(out, "texts.json"), "w", encoding="utf-8") as handle:
        json.dump(counts, handle)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR"), help="GLUE root (SST-2, CoLA, MRPC)")
    parser.add_argument("--wikitext", required=True, help="folder with WikiText-2's valid.txt and test.txt")
    parser.add_argument("--out", required=True, help="folder for the three text files and texts.json")
    args = parser.parse_args(argv)
    if not args.glue_dir:
        parser.error("--glue-dir (or GLUE_DIR) is needed.")
    print(write_texts(args.glue_dir, args.wikitext, args.out))


if __name__ == "__main__":
    main()
