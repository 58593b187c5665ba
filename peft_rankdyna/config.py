"""`RankDynaConfig`: the PEFT config of RankDyna, every field documented and validated."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

from peft.config import PeftConfig

from .budget import Schedule, StepSpec, check_budget, resolve_steps
from .registry import RANKDYNA_PEFT_TYPE


@dataclass
class RankDynaConfig(PeftConfig):
    """Configuration of a RankDyna model (Hua et al., Findings of EMNLP 2023).

    Every target ``nn.Linear`` is rewritten as the SVD factors of its pre-trained weight; the whole
    model is then fine-tuned while a global allocator prunes singular groups down to
    ``target_budget`` of the target matrices' parameters on a cubic schedule.

    Args:
        target_modules: Module names (list, suffix match) or one regex (full match) to factor.
            ``None`` uses the per-``model_type`` default: Q, K, V, attention output, FFN in and out
            of every encoder layer (BERT, RoBERTa, DistilBERT, ELECTRA, MPNet, XLM-R, CamemBERT).
        exclude_modules: Module names or a regex never to factor.
        target_budget: Fraction (0, 1] of the target matrices' original parameters kept at the end.
        init_budget: ``None`` starts at full rank (the wrapped model reproduces the original; the
            factors of a square matrix hold twice its parameters while training). A float in
            [target_budget, 1] starts each matrix at the largest rank whose factors cost at most
            that fraction of its dense size, e.g. 1.0 so training never holds more parameters than
            the dense model (the smallest singular values are dropped at the start).
        tinit: Warm-up at the initial budget, in optimizer steps (int) or as a fraction of
            ``total_step`` (float in [0, 1)).
        tfinal: Final phase with the mask frozen at the target budget, steps or fraction.
        deltaT: Mask refresh interval during the budget decrease, steps or fraction.
        total_step: Total optimizer steps. Optional: ``RankDynaCallback`` takes it from the
            Trainer; a custom loop must set it.
        beta1: EMA coefficient of the sensitivity, in [0, 1).
        beta2: EMA coefficient of the uncertainty, in [0, 1).
        orth_reg_weight: Weight of ‖UᵀU−I‖²_F + ‖VᵀV−I‖²_F added to the training loss (0 = off).
        train_base_model: Also fine-tune (and save with the adapter) every non-target parameter:
            embeddings, LayerNorms, pooler, head. The paper's setting: compression and task
            adaptation in one round. ``False`` trains only the factors and ``modules_to_save``.
        modules_to_save: Extra modules wrapped and saved the PEFT way (e.g. a new classifier).
        allocation: ``"global"`` (the method): all groups of all matrices compete for one budget.
            ``"per_matrix"`` (ablation): every matrix keeps the same fraction of its parameters and
            importance only chooses which of its groups.
        importance_updates: ``"dynamic"`` (the method): scores are re-estimated until the final
            phase. ``"frozen"`` (ablation): scores stop updating at the end of the warm-up.
        factor_step_scale: How far an optimizer step moves the factors U and Vᵀ. ``"matched"`` (the
            default) scales it, per matrix, so that an Adam step moves the effective weight about as
            far as Adam moves the dense weight at the same learning rate (see
            :func:`~peft_rankdyna.layer.matched_step_scale`); a number c scales every matrix's steps
            by c; ``1.0`` is plain Adam on the factors, whose steps move MiniLM's weights 2–3× as far
            as dense fine-tuning does (the behaviour before this option).
        rank_multiple: When merging, round every factored matrix's rank down to a multiple of this
            (e.g. 8 or 16, for hardware kernels) and re-spend the freed parameters globally, so the
            budget still holds. ``None`` keeps the allocated ranks.
    """

    target_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names (list) or a regex of the nn.Linear layers to factor."}
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names (list) or a regex never to factor."}
    )
    target_budget: float = field(
        default=0.5, metadata={"help": "Fraction (0, 1] of the target matrices' parameters kept at the end."}
    )
    init_budget: Optional[float] = field(
        default=None, metadata={"help": "None = full rank; else start below full rank at this fraction of dense."}
    )
    tinit: StepSpec = field(default=0.1, metadata={"help": "Warm-up: steps (int) or fraction (float)."})
    tfinal: StepSpec = field(default=0.2, metadata={"help": "Final frozen-mask phase: steps or fraction."})
    deltaT: StepSpec = field(default=10, metadata={"help": "Mask refresh interval: steps or fraction."})
    total_step: Optional[int] = field(default=None, metadata={"help": "Total optimizer steps."})
    beta1: float = field(default=0.85, metadata={"help": "EMA coefficient of the sensitivity, in [0, 1)."})
    beta2: float = field(default=0.85, metadata={"help": "EMA coefficient of the uncertainty, in [0, 1)."})
    orth_reg_weight: float = field(default=0.0, metadata={"help": "Weight of the orthogonality regulariser."})
    train_base_model: bool = field(
        default=True, metadata={"help": "Fine-tune and save every non-target parameter too."}
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Extra modules to train and save the PEFT way."}
    )
    allocation: str = field(default="global", metadata={"help": "'global' or the 'per_matrix' ablation."})
    importance_updates: str = field(
        default="dynamic", metadata={"help": "'dynamic' or the 'frozen' ablation (no updates after warm-up)."}
    )
    factor_step_scale: Union[str, float] = field(
        default="matched", metadata={"help": "'matched' (Adam steps sized like dense ones) or a number (1.0 = raw)."}
    )
    rank_multiple: Optional[int] = field(
        default=None, metadata={"help": "Round merged ranks down to multiples of this, re-spending the rest."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = RANKDYNA_PEFT_TYPE
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        check_budget(self.target_budget, "target_budget")
        if self.init_budget is not None and not self.target_budget <= self.init_budget <= 1.0:
            raise ValueError(
                f"`init_budget` must be None (full rank) or in [target_budget={self.target_budget}, 1], "
                f"got {self.init_budget}."
            )
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {getattr(self, name)}.")
        if self.orth_reg_weight < 0:
            raise ValueError(f"`orth_reg_weight` must be ≥ 0, got {self.orth_reg_weight}.")
        for name in ("tinit", "tfinal", "deltaT"):
            resolve_steps(getattr(self, name), self.total_step or 1, name)
        if self.allocation not in ("global", "per_matrix"):
            raise ValueError(f"`allocation` must be 'global' or 'per_matrix', got {self.allocation!r}.")
        if self.importance_updates not in ("dynamic", "frozen"):
            raise ValueError(f"`importance_updates` must be 'dynamic' or 'frozen', got {self.importance_updates!r}.")
        if self.factor_step_scale != "matched" and not (
            isinstance(self.factor_step_scale, (int, float)) and not isinstance(self.factor_step_scale, bool)
            and math.isfinite(self.factor_step_scale) and self.factor_step_scale > 0
        ):
            raise ValueError(f"`factor_step_scale` must be 'matched' or a finite number > 0, got "
                             f"{self.factor_step_scale!r}.")
        if self.rank_multiple is not None and (not isinstance(self.rank_multiple, int) or self.rank_multiple < 1):
            raise ValueError(f"`rank_multiple` must be None or an int ≥ 1, got {self.rank_multiple!r}.")
        if self.deltaT <= 0:
            raise ValueError(f"`deltaT` must be ≥ 1 step or a fraction in (0, 1), got {self.deltaT}.")
        if self.total_step is not None:
            self.schedule(self.total_step)

    def schedule(self, total_step: Optional[int] = None) -> Schedule:
        """The resolved schedule for ``total_step`` (default: the configured one)."""
        total = total_step if total_step is not None else self.total_step
        if total is None:
            raise ValueError(
                "RankDyna needs the total number of optimizer steps: set `RankDynaConfig(total_step=...)`, "
                "or train with `RankDynaCallback`, which takes it from the Trainer."
            )
        return Schedule.build(self.tinit, self.tfinal, self.deltaT, total)
