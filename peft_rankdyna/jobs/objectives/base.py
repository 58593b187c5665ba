"""The objective interface: what a job trains a model for, and how the saved model is judged.

An objective reads and tokenises its data, builds the model it starts from (with its head), says what the Trainer
trains (the model itself, or the model inside a wrapper that computes the loss), scores a model as it
will be saved and checks that it did not collapse, and names the files saved beside it and the task
it exports as. The runner (:mod:`peft_rankdyna.jobs.runner`) does the rest the same way for every
objective: the method (dense, RankDyna, the SVD baselines), training, merging, saving, timing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from torch import nn

if TYPE_CHECKING:
    from ..settings import CompressSettings


@dataclass
class Scores:
    """A saved model's dev metrics and the collapse check's verdict (``CollapseReport.to_dict()``)."""

    metrics: dict[str, float]
    collapse: dict[str, Any] = field(default_factory=dict)


class Objective(ABC):
    """One training objective; subclasses set the class attributes and implement the abstract methods.

    Attributes:
        name: the ``--objective`` value.
        task_type: PEFT's task type for the RankDyna config (``SEQ_CLS``, ``FEATURE_EXTRACTION``, ...).
        export_task: the Optimum task the compact model exports as.
        methods: the compression methods it supports (of ``rankdyna``, ``svd``, ``fwsvd``).
        dense_reference: whether plain dense training (no budget) is a meaningful reference run.
        first_round: whether the two-round baselines fine-tune the dense model before truncating it.
    """

    name: ClassVar[str]
    task_type: ClassVar[str]
    export_task: ClassVar[str]
    methods: ClassVar[tuple[str, ...]]
    dense_reference: ClassVar[bool]
    first_round: ClassVar[bool]

    def __init__(self, settings: CompressSettings) -> None:
        self.settings = settings
        self.train_dataset: Optional[Any] = None
        self.collator: Optional[Any] = None

    def check(self) -> None:
        """Refuse settings this objective cannot run, before any data or model is read."""
        settings = self.settings
        if settings.method not in self.methods:
            raise ValueError(f"The {self.name} objective compresses with --method {' or '.join(self.methods)}, "
                             f"not {settings.method!r}.")
        if settings.budget is None and not self.dense_reference:
            raise ValueError(f"The {self.name} objective compresses with --method {' or '.join(self.methods)} and a "
                             "--budget; it has no dense reference run.")

    @abstractmethod
    def read_data(self) -> None:
        """Read the data files (every problem with them an error now, before any model is loaded)."""

    @abstractmethod
    def prepare(self, tokenizer: Any) -> None:
        """Tokenise the data: set ``train_dataset`` and ``collator``, keep what scoring needs."""

    @abstractmethod
    def load_model(self, path: str) -> nn.Module:
        """The model to train, from a local folder, with this objective's head."""

    def training_model(self, model: nn.Module) -> nn.Module:
        """What the Trainer trains: a module whose output has the loss (default: ``model`` itself)."""
        return model

    def scored_model(self, training_model: nn.Module) -> nn.Module:
        """The model :meth:`score` takes, inside what :meth:`training_model` made of it (default: itself)."""
        return training_model

    @abstractmethod
    def score(self, model: nn.Module) -> Scores:
        """The dev metrics of ``model`` (as saved) and whether it collapsed."""

    def extra_files(self, folder: str) -> None:
        """Write files the saved model needs beside its weights into ``folder`` (default: none)."""

    def describe(self) -> dict[str, Any]:
        """Entries for ``results.json`` about the data (default: none)."""
        return {}
