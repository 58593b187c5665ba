"""`CompressSettings`: everything one `rankdyna compress` job needs, as the CLI and the examples fill it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

from ..loading import model_location

METHODS = ("rankdyna", "svd", "fwsvd", "asvd", "svdllm")
INIT_BASES = ("svd", "whitened")
# Objectives whose RankDyna runs start from the whitened basis unless told otherwise (measured: see init_basis).
WHITENED_BY_DEFAULT = ("causal-lm", "embedding-distillation")
DISTILL_LOSSES = ("mse", "cosine", "mse+cosine")


@dataclass
class CompressSettings:
    """Everything a job needs; the CLI and the GLUE example fill it from their arguments.

    ``objective`` names what is trained for (:data:`peft_rankdyna.jobs.objectives.OBJECTIVES`):
    ``"classification"`` (a GLUE ``task``, or your own ``train_file``/``validation_file`` with
    ``text_columns`` and ``label_column``, inferred when not given) or ``"embedding-distillation"``
    (unlabelled ``texts``, checked on ``validation_texts`` or on texts held out of ``texts``) or
    ``"causal-lm"`` (plain ``texts`` for next-token prediction, perplexity on ``validation_texts`` or
    on held-out lines). ``model`` may be a ``.gguf`` file (or a folder with ``gguf_file`` naming one
    in it): transformers de-quantizes its weights to fp32 while loading.
    ``budget=None`` runs plain dense fine-tuning of the same model under the same settings, the
    reference a compressed model is compared with. ``method`` is ``"rankdyna"`` or a baseline:
    ``"svd"``, ``"fwsvd"`` (Fisher-weighted over the whole training set), ``"asvd"`` (activation-aware
    scaling) or ``"svdllm"`` (truncation-aware whitening), the last two calibrated on
    ``calibration_samples`` training examples (the first batches the seeded Trainer draws);
    ``rankdyna`` holds RankDynaConfig fields. ``init_basis="whitened"`` starts RankDyna's factors from
    the SVD of W·S, S SVD-LLM's whitening of each target's inputs on ``calibration_samples`` training
    examples, instead of the SVD of W (``"svd"``; :meth:`peft_rankdyna.RankDynaModel.rebase_factors`).
    ``None`` (the default) is ``"whitened"`` for RankDyna on the causal-LM objective (on SmolLM2-135M
    it halved the perplexity after 100 steps at budget 0.6, docs/decoders.md) and on embedding
    distillation (all-MiniLM-L6-v2 at 0.5: mean cosine 0.898 against 0.841, docs/embeddings.md), and
    ``"svd"`` otherwise (classification: not measured from the whitened start; every GLUE result is
    from the SVD basis), including where ``init_budget`` or ``orth_reg_weight`` rules a whitened start out.
    ``finetuned_model`` lets a two-round baseline skip its first round by starting from a model
    already fine-tuned on the task under the same settings (the ``finetuned/`` folder of a dense run).
    ``distill_loss`` and ``token_loss_weight`` are the embedding-distillation objective's loss: on the
    pooled embeddings ``"mse"`` (sentence-transformers' ``MSELoss``), ``"cosine"`` (1 − cosine) or their
    sum, plus ``token_loss_weight`` × the mean squared difference of the last hidden states at real
    tokens (the teacher then runs beside the student in every step). ``eval_steps`` scores the model
    being trained every that many optimizer steps (and before the first), the curve in
    ``results.json`` and ``curve.png``. ``save_steps`` writes a crash-safe checkpoint into ``output_dir``
    every that many optimizer steps (keeping the last ``save_total_limit``), and ``resume`` continues the
    run from the last of them (refused where the settings differ from the checkpointed run's, in
    anything but these three and the progress output); both need a job that trains one round (dense,
    RankDyna, or a baseline without a first round or given ``finetuned_model``) without self-distillation
    (:mod:`peft_rankdyna.jobs.checkpoints`). The checkpoints are removed once the results are written.
    ``epochs=None`` (the default) is resolved when the job starts (:mod:`peft_rankdyna.jobs.length`): one
    RankDyna round on an objective whose baselines train two rounds (classification) trains 6 epochs, as
    many steps as those two rounds; everything else trains 3 (dense fine-tuning, each round of the
    baselines, and RankDyna on the objectives whose baselines train one); ``epochs=3`` gives the earlier
    RankDyna default.
    """

    model: str
    task: Optional[str]
    output_dir: str
    budget: Optional[float] = 0.5
    epochs: Optional[float] = None
    learning_rate: float = 5e-5
    batch_size: int = 16
    max_seq_length: int = 128
    seed: int = 42
    max_steps: int = -1
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    glue_dir: Optional[str] = None
    method: str = "rankdyna"
    rankdyna: dict[str, Any] = field(default_factory=dict)
    show_progress: bool = True
    finetuned_model: Optional[str] = None
    train_file: Optional[str] = None
    validation_file: Optional[str] = None
    text_columns: Optional[list[str]] = None
    label_column: Optional[str] = None
    objective: str = "classification"
    texts: Optional[str] = None
    validation_texts: Optional[str] = None
    gguf_file: Optional[str] = None
    calibration_samples: int = 128
    init_basis: Optional[str] = None
    distill_loss: str = "mse"
    token_loss_weight: float = 0.0
    eval_steps: Optional[int] = None
    final_lr_restart: bool = False
    self_distill_weight: float = 0.0
    save_steps: Optional[int] = None
    save_total_limit: Optional[int] = 2
    resume: bool = False

    def __post_init__(self) -> None:
        # Paths may come as pathlib objects; results.json records them as text.
        self.model, self.output_dir = os.fspath(self.model), os.fspath(self.output_dir)
        if self.model.endswith(".gguf") and self.gguf_file is None:  # a GGUF file: its folder and its name
            self.model, self.gguf_file = model_location(self.model)
        for name in ("glue_dir", "finetuned_model", "train_file", "validation_file", "texts", "validation_texts"):
            if getattr(self, name) is not None:
                setattr(self, name, os.fspath(getattr(self, name)))
        if self.method not in METHODS:
            raise ValueError(f"Unknown method {self.method!r}; choose one of {', '.join(METHODS)}.")
        if self.init_basis is None:
            whitened = (self.objective in WHITENED_BY_DEFAULT and self.method == "rankdyna"
                        and self.budget is not None)
            self.init_basis = "whitened" if whitened and not self._keeps_svd_basis() else "svd"
        if self.init_basis not in INIT_BASES:
            raise ValueError(f"Unknown init_basis {self.init_basis!r}; choose one of {', '.join(INIT_BASES)}.")
        if self.init_basis != "svd" and (self.method != "rankdyna" or self.budget is None):
            raise ValueError("init_basis='whitened' is where RankDyna's factors start; use it with method "
                             "'rankdyna' and a budget.")
        if self.init_basis != "svd" and (self.rankdyna.get("init_budget") is not None
                                         or self.rankdyna.get("orth_reg_weight")):
            raise ValueError("init_basis='whitened' needs init_budget=None (full rank to re-factor) and no "
                             "orthogonality penalty (a whitened Vᵀ is not orthonormal).")
        self._check_distillation()
        self._check_weight("self_distill_weight")
        if (self.final_lr_restart or self.self_distill_weight) and (self.method != "rankdyna" or self.budget is None):
            raise ValueError("final_lr_restart and self_distill_weight shape one RankDyna round; use them with "
                             "method 'rankdyna' and a budget.")
        for name in ("eval_steps", "save_steps", "save_total_limit"):
            self._check_steps(name)
        if self.epochs is not None and not (isinstance(self.epochs, (int, float)) and not isinstance(self.epochs, bool)
                                            and 0 < self.epochs < float("inf")):
            raise ValueError(f"epochs must be None (the default length) or a number > 0, got {self.epochs!r}.")

    def _check_steps(self, name: str) -> None:
        """A count of steps or checkpoints: None, or an int ≥ 1."""
        value = getattr(self, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be None or an int ≥ 1, got {value!r}.")

    def _check_weight(self, name: str) -> None:
        """A loss weight: a finite number ≥ 0 (NaN fails the comparison too)."""
        value = getattr(self, name)
        if not (isinstance(value, (int, float)) and 0.0 <= value < float("inf")):
            raise ValueError(f"{name} must be a finite number ≥ 0, got {value!r}.")

    def _check_distillation(self) -> None:
        """The distillation loss options: valid values, and only where they have a meaning."""
        if self.distill_loss not in DISTILL_LOSSES:
            raise ValueError(f"Unknown distill_loss {self.distill_loss!r}; choose one of {', '.join(DISTILL_LOSSES)}.")
        self._check_weight("token_loss_weight")
        if self.objective != "embedding-distillation" and (self.distill_loss != "mse" or self.token_loss_weight):
            raise ValueError("distill_loss and token_loss_weight are the embedding-distillation objective's loss; "
                             f"the {self.objective} objective has its own.")

    def _keeps_svd_basis(self) -> bool:
        """RankDyna settings a whitened start cannot serve: a truncated start or an orthogonality penalty."""
        return self.rankdyna.get("init_budget") is not None or bool(self.rankdyna.get("orth_reg_weight"))
