"""The training-loop side of the tracker, framework-free (`prunelab.training.hf` adapts it to a HF Trainer)."""

from __future__ import annotations

from prunelab.errors import PrunelabError
from prunelab.training.gradual import GradualPruning
from prunelab.training.tracker import TrajectoryTracker


class TrajectoryCallback:
    """The training-loop side, framework-free: records snapshots and drives gradual pruning.

    Call `on_train_begin(epochs, steps)`, `on_optimizer_step()` after each optimiser step and `on_epoch_end()` after
    each epoch. A snapshot is taken at each epoch end, or every `every_steps` optimiser steps when given (for short
    fine-tunes of a single epoch).
    """

    def __init__(
        self, tracker: TrajectoryTracker, gradual: GradualPruning | None = None, every_steps: int | None = None
    ) -> None:
        self.tracker, self.gradual, self.every_steps = tracker, gradual, every_steps
        self.steps = 0

    def on_train_begin(self, epochs: int | None = None, steps: int | None = None) -> None:
        if self.tracker.total is None and self.tracker.last_k is not None:
            planned = steps // self.every_steps if self.every_steps else epochs
            if not planned:
                raise PrunelabError("the tracker needs the planned number of epochs (or steps) for its window")
            self.tracker.total = planned

    def on_optimizer_step(self) -> None:
        self.steps += 1
        if self.gradual is not None:
            self.gradual.on_optimizer_step()
        if self.every_steps and self.steps % self.every_steps == 0:
            self.tracker.record()

    def on_epoch_end(self) -> None:
        if not self.every_steps:
            self.tracker.record()
