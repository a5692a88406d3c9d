"""Gradual pruning during training: masks grown on a cubic schedule (Zhu & Gupta 2017), re-applied each step."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunelab.config.pattern import count_to_prune
from prunelab.models import prunable_layers, weight_2d
from prunelab.training.threshold import find_prune_rate
from prunelab.training.tracker import TrajectoryTracker

log = logging.getLogger(__name__)


@dataclass
class GradualSchedule:
    """Sparsity as a function of the optimiser step.

    Cubic (Zhu & Gupta 2017): s(t) = s_f + (s_i - s_f) (1 - (t - start) / (end - start))^3 between `start` and
    `end`, masks updated every `every` steps; not cubic: s_f at once from `start` on, masks then only kept.
    """

    final_sparsity: float
    start: int = 0
    end: int = 0
    every: int = 1
    initial_sparsity: float = 0.0
    cubic: bool = True

    def sparsity_at(self, step: int) -> float:
        if step < self.start:
            return 0.0
        if not self.cubic or step >= self.end:
            return self.final_sparsity
        frac = (step - self.start) / max(1, self.end - self.start)
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1 - frac) ** 3

    def due(self, step: int) -> bool:
        return step >= self.start and ((step - self.start) % self.every == 0 or step == self.end)


class GradualPruning:
    """Masks grown on a schedule during training and re-applied after every optimiser step.

    Scores are the tracker's averaged |W| once it has snapshots in its window, the current |W| before that. A
    weight once pruned stays pruned (its score is forced lowest), so the sparsity only rises.
    """

    def __init__(self, model: nn.Module, schedule: GradualSchedule, tracker: TrajectoryTracker | None = None) -> None:
        self.model, self.schedule, self.tracker = model, schedule, tracker
        self.layers = prunable_layers(model, tracker.targets if tracker else None, tracker.ignore if tracker else None)
        self.masks: dict[str, torch.Tensor] = {}
        self.step = 0
        self.sparsity = 0.0

    def update(self, step: int) -> None:
        """Grow the masks to the schedule's sparsity at `step` (when due), then re-apply them."""
        target = self.schedule.sparsity_at(step)
        if self.schedule.due(step) and target > self.sparsity:
            use_avg = self.tracker is not None and self.tracker.recorded > 0
            with torch.no_grad():
                for name, module in self.layers.items():
                    weight = weight_2d(module)
                    score = (self.tracker.average(name).to(weight.device) if use_avg else weight.float()).abs()
                    if name in self.masks:
                        score[self.masks[name]] = -1.0
                    self.masks[name], _ = find_prune_rate(score, count_to_prune(score.numel(), target))
            self.sparsity = target
            log.info("gradual pruning: step %d, sparsity %.3f", step, target)
        self.apply()

    def apply(self) -> None:
        """Zero the masked weights (call after each optimiser step: the step moves them off zero)."""
        with torch.no_grad():
            for name, mask in self.masks.items():
                weight_2d(self.layers[name]).masked_fill_(mask, 0)

    def on_optimizer_step(self) -> None:
        self.step += 1
        self.update(self.step)

    def attach(self, optimizer: torch.optim.Optimizer) -> Any:
        """Run `on_optimizer_step` after every `optimizer.step()`; returns the removable hook handle."""
        return optimizer.register_step_post_hook(lambda *_args: self.on_optimizer_step())
