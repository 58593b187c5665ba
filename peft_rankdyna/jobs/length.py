"""How long a job trains when it is not told (``epochs=None``): the default training length.

Dense fine-tuning and each round of the baselines train ``BASE_EPOCHS`` epochs. One RankDyna round that
replaces a two-round pipeline (dense fine-tuning, truncation, fine-tuning again: the classification
objective's baselines) trains ``RANKDYNA_EPOCHS``, as many steps as those two rounds together. Where the
baselines train one round (embedding distillation and the causal-LM objective start them from the
pre-trained model), RankDyna's round keeps ``BASE_EPOCHS``: nothing was measured there to change it.

Chosen in issue #21 on MiniLM-L6 against FWSVD + FT (3 + 3 epochs), docs/results.md "The default
length": with 3 epochs one round trailed on MRPC in every seed and was level on CoLA at budget 0.5; with 6
it led on average on every task and budget run. A length from the training set's size (the fewest
epochs, at least 3, that make 1,200 steps: 6 on MRPC, 3 on CoLA and SST-2) cost less but trailed on CoLA
at 0.5. 4 and 5 epochs were not measured.
"""

from __future__ import annotations

from dataclasses import replace

from .settings import CompressSettings

BASE_EPOCHS = 3
RANKDYNA_EPOCHS = 6


def default_epochs(replaces_two_rounds: bool) -> int:
    """The epochs a job trains by default: ``RANKDYNA_EPOCHS`` for a RankDyna round that replaces two rounds
    of a baseline, else ``BASE_EPOCHS``."""
    return RANKDYNA_EPOCHS if replaces_two_rounds else BASE_EPOCHS


def with_default_length(settings: CompressSettings, first_round: bool) -> CompressSettings:
    """``settings`` with ``epochs`` filled in where it was left to the default (``None``), for an objective
    whose baselines train a dense ``first_round`` or not; the caller's object is not changed."""
    if settings.epochs is not None:
        return settings
    one_round = settings.method == "rankdyna" and settings.budget is not None
    return replace(settings, epochs=float(default_epochs(one_round and first_round)))
