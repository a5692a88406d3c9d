"""Training-aware pruning: rank weights by how they behaved over training, not only by their final value.

Islam, Belhaouari, Bermak, "Systematic Weight Evaluation for Pruning Large Language Models" (2025): keep a
weighted-average clone of the weights over the last K epochs, later epochs counting more, and prune, per layer, the
weights whose averaged magnitude is below threshold = std(|W_avg|) x PruneRate. PruneRate multiplies a standard
deviation: it is not a sparsity, so the achieved sparsity is measured and reported. A target-sparsity mode finds,
per layer and by bisection, the PruneRate that removes the requested share (exactly; weights tied at the threshold
are taken in index order), so the method can be compared with the others at equal sparsity.

This module is the registered method only. The state it reads (the tracker), gradual pruning during training and
the training-loop callbacks live in `prunelab.training` (re-exported here for existing imports).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from prunelab.config.methods import TrajectoryOptions
from prunelab.config.prune import PruneConfig
from prunelab.errors import PrunelabError
from prunelab.models import prunable_layers, weight_2d
from prunelab.pruning.base import Capabilities, LayerResult, Pruner, PruneResult
from prunelab.pruning.masks import count_to_prune, nm_mask
from prunelab.training.callbacks import TrajectoryCallback
from prunelab.training.gradual import GradualPruning, GradualSchedule
from prunelab.training.threshold import find_prune_rate, threshold_mask
from prunelab.training.tracker import MODEL_ATTR, RECORD_HINT, TrajectoryTracker

__all__ = [
    "GradualPruning",
    "GradualSchedule",
    "Trajectory",
    "TrajectoryCallback",
    "TrajectoryOptions",
    "TrajectoryTracker",
    "find_prune_rate",
    "threshold_mask",
]


class Trajectory(Pruner):
    """Registered method `trajectory`: masks from a recorded weight trajectory; no calibration data."""

    name = "trajectory"
    summary = "weighted average of |W| over the last K training epochs (Islam et al. 2025); needs a recorded trajectory"
    Options = TrajectoryOptions
    capabilities = Capabilities(needs_calibration=False, needs_training_state=True, block_local=False)

    def _resolve_sparsity(self, cfg: PruneConfig) -> float:
        if self.options.prune_rate is None:
            return cfg.resolved_sparsity()
        # Threshold mode: PruneRate decides and the sparsity is measured, so no sparsity is resolved.
        if cfg.pattern_obj.is_nm:
            raise PrunelabError("trajectory prune_rate (threshold mode) applies to unstructured pruning only")
        if cfg.sparsity is not None:
            self.notes.append(f"sparsity {cfg.sparsity:g} ignored: prune_rate is set, the sparsity is measured")
        return 0.0

    def _tracker(self, model: nn.Module) -> TrajectoryTracker:
        if self.options.tracker:
            return TrajectoryTracker.load(self.options.tracker)
        tracker = getattr(model, MODEL_ATTR, None)
        if not isinstance(tracker, TrajectoryTracker):
            raise PrunelabError(f"method 'trajectory' needs a recorded weight trajectory; {RECORD_HINT}")
        return tracker

    def prune(self, model: nn.Module, calib: torch.Tensor | None) -> PruneResult:
        start = time.perf_counter()
        tracker = self._tracker(model)
        layers = prunable_layers(model, self.cfg.targets, self.cfg.ignore)
        if not layers:
            raise PrunelabError("the target/ignore filter selects no layer to prune")
        missing = [n for n in layers if n not in tracker.sums]
        if missing:
            raise PrunelabError(f"no trajectory for {len(missing)} selected layers (e.g. {missing[0]}); track them")
        threshold_mode = self.options.prune_rate is not None
        result = PruneResult(self.name, str(self.pattern), self.sparsity)
        rates: dict[str, float] = {}
        with torch.no_grad():
            for name, module in layers.items():
                weight = weight_2d(module)
                avg = tracker.average(name).to(weight.device)
                if avg.shape != weight.shape:
                    raise PrunelabError(f"{name}: trajectory shape {tuple(avg.shape)} != weight {tuple(weight.shape)}")
                if self.options.weights == "average":
                    weight.copy_(avg.to(weight.dtype))
                score = avg.abs()
                if threshold_mode:
                    rates[name] = self.options.prune_rate
                    mask = threshold_mask(score, rates[name])
                elif self.pattern.is_nm:
                    mask = nm_mask(score, self.pattern)
                else:
                    mask, rates[name] = find_prune_rate(score, count_to_prune(score.numel(), self.sparsity))
                weight.masked_fill_(mask, 0)
                zeros = int((weight == 0).sum())
                result.layers[name] = LayerResult(
                    weight.numel(), zeros, zeros / weight.numel() if threshold_mode else self.sparsity
                )
        if threshold_mode:
            result.sparsity = result.achieved_sparsity
        result.extra["trajectory"] = {
            "mode": "threshold" if threshold_mode else "target",
            "prune_rates": rates,
            "weights": self.options.weights,
            "last_k": tracker.last_k,
            "weighting": tracker.weighting,
            "snapshots_averaged": tracker.recorded,
        }
        result.notes.extend(self.notes)
        result.seconds = time.perf_counter() - start
        return result
