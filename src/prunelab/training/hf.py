"""The trajectory tracker as a Hugging Face `TrainerCallback`.

A separate module because importing `transformers.trainer_callback` costs seconds (it pulls in `accelerate`), a
price `import prunelab` should not pay. The logic lives in `TrajectoryCallback`; this class only forwards events:

    tracker = TrajectoryTracker(model, last_k=5)          # total is read from the Trainer at train begin
    trainer = Trainer(model, args, ..., callbacks=[TrajectoryTrainerCallback(TrajectoryCallback(tracker))])
    trainer.train()
    prune(model, PruneConfig(method="trajectory", sparsity=0.5))
"""

from __future__ import annotations

import math
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from prunelab.training.callbacks import TrajectoryCallback


class TrajectoryTrainerCallback(TrainerCallback):
    """Records weight snapshots (each epoch, or every N steps) and re-applies gradual masks after each step."""

    def __init__(self, callback: TrajectoryCallback) -> None:
        self.callback = callback

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        epochs = math.ceil(state.num_train_epochs) if state.num_train_epochs else None
        self.callback.on_train_begin(epochs=epochs, steps=state.max_steps or None)

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.callback.on_optimizer_step()

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.callback.on_epoch_end()
