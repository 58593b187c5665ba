"""How close a student's embeddings are to its teacher's, measured the way an embedding user would.

Cosine between paired embeddings says how far each vector moved; what a search index returns is
decided by the neighbours, so two index measures sit beside it, both against the teacher:

- ``recall_at_k``: the student's own index (documents and queries both encoded by the student) —
  of the teacher's k nearest neighbours of each text, the share the student also returns;
- ``mixed_recall_at_k``: the student dropped into a teacher-built index (documents encoded by the
  teacher, queries by the student) — the same overlap, which says whether the student can serve
  queries against vectors the teacher already wrote.

Neighbours are by cosine; a text is never its own neighbour (its own document is left out of the
mixed index's answers too, so both lists are over the same candidates).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

QUERY_CHUNK = 1024  # queries scored at once: a 1,024 × pool similarity block, not pool × pool in memory


def cosine_report(student: torch.Tensor, teacher: torch.Tensor) -> dict[str, float]:
    """Mean and 5th-percentile cosine similarity between paired student and teacher embeddings."""
    cosines = F.cosine_similarity(student, teacher, dim=-1).numpy()
    return {"mean_cosine": float(cosines.mean()), "p5_cosine": float(np.percentile(cosines, 5))}


def nearest(queries: torch.Tensor, documents: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` documents most cosine-similar to each query, query ``i``'s own document ``i`` left out.

    ``queries`` and ``documents`` are paired row by row (the same texts, possibly encoded by two models).
    """
    if len(queries) != len(documents):
        raise ValueError(f"queries and documents must be the same texts: {len(queries)} against {len(documents)}.")
    if not 0 < k < len(documents):
        raise ValueError(f"k must be in [1, {len(documents) - 1}] for {len(documents)} texts, got {k}.")
    queries, documents = F.normalize(queries.float(), dim=-1), F.normalize(documents.float(), dim=-1)
    found = []
    for start in range(0, len(queries), QUERY_CHUNK):
        similarity = queries[start:start + QUERY_CHUNK] @ documents.T
        rows = torch.arange(similarity.shape[0])
        similarity[rows, rows + start] = -float("inf")
        found.append(similarity.topk(k, dim=-1).indices)
    return torch.cat(found)


def overlap(found: torch.Tensor, expected: torch.Tensor) -> float:
    """Mean share of each row of ``expected`` that the same row of ``found`` holds (recall@k)."""
    hits = (found.unsqueeze(-1) == expected.unsqueeze(-2)).any(-1).sum(-1)
    return float(hits.float().mean() / expected.shape[1])


def index_report(student: torch.Tensor, teacher: torch.Tensor, k: int = 10) -> dict[str, float]:
    """``recall_at_k`` and ``mixed_recall_at_k`` of the student against the teacher (module docstring)."""
    expected = nearest(teacher, teacher, k)
    return {f"recall_at_{k}": overlap(nearest(student, student, k), expected),
            f"mixed_recall_at_{k}": overlap(nearest(student, teacher, k), expected)}
