"""Scores while training: the objective's dev metrics every few optimizer steps, the curve of a run.

Without it a run is judged at its end only; with ``eval_steps`` the curve shows whether the model
was still improving (under-training) or had stopped (too little capacity), and, for RankDyna, what
each fall of the ranks cost and how much of it training won back.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainerCallback

from ..callback import log_entry, logged_entries

if TYPE_CHECKING:
    from .objectives import Objective


POINT_KEY = "progress_scores"


class ProgressScores(TrainerCallback):
    """Score the model being trained before the first step, every ``every`` optimizer steps and after the last.

    ``points`` holds one entry per scoring: the training round (0, then 1 for the second round of
    the two-round baselines), the round's optimizer step, the objective's metrics and whether the
    collapse check fired (its warnings are not repeated: an untrained head "collapses" by design).
    Scoring leaves the model in training mode and the random state as it found them, so a run
    scored as it trains is the run that would have trained without it. Each point is also written
    into the Trainer's log history (under ``"progress_scores"``), which every checkpoint saves: a
    resumed run takes its round's earlier points back from there.
    """

    def __init__(self, objective: Objective, every: int) -> None:
        self.objective, self.every = objective, every
        self.points: list[dict[str, Any]] = []
        self.round = -1

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.round += 1
        if state.global_step == 0:
            self._score(model, state)
        else:  # resumed: the points so far are in the checkpoint, and no new one is due (as in a run never killed)
            self.points.extend(logged_entries(state, POINT_KEY))

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step % self.every == 0:
            self._score(model, state)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.points[-1]["step"] != state.global_step:
            self._score(model, state)

    def _score(self, training_model: Any, state: Any) -> None:
        training = training_model.training
        with torch.random.fork_rng(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = self.objective.score(self.objective.scored_model(training_model))
        training_model.train(training)
        point = {"round": self.round, "step": state.global_step, **scores.metrics,
                 "collapsed": bool(scores.collapse.get("collapsed", False))}
        self.points.append(point)
        log_entry(state, POINT_KEY, point)
