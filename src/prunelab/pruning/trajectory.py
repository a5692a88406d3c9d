"""Training-aware pruning: rank weights by how they behaved over training, not only by their final value.

Islam, Belhaouari, Bermak, "Systematic Weight Evaluation for Pruning Large Language Models" (2025): keep a
weighted-average clone of the weights over the last K epochs, later epochs counting more (weight sqrt(i) for the
i-th epoch of the window), and prune, per layer, the weights whose averaged magnitude is below
threshold = std(|W_avg|) x PruneRate. PruneRate multiplies a standard deviation: it is not a sparsity, so the
achieved sparsity is measured and reported. A target-sparsity mode finds, per layer and by bisection, the PruneRate
that removes the requested share (exactly; weights tied at the threshold are taken in index order), so the method
can be compared with the others at equal sparsity.

Memory is O(parameters), not O(parameters x epochs): the tracker keeps one float32 running sum per tracked layer,
sum_i w(i) W_i, and the scalar sum_i w(i). An exact sliding window would have to forget the oldest snapshot, which
needs the snapshot itself; so the window is fixed in advance instead: given the planned number of snapshots
(`total`, set from the Trainer's epoch count by the callback), accumulation starts at snapshot total - K + 1 and the
window's i-th snapshot gets weight w(i). Exact for any weighting, one tensor per layer. Snapshots past `total` keep
being added (with a warning): the average then covers more than K snapshots.

Usage (plain PyTorch): `tracker = TrajectoryTracker(model, last_k=10, total=epochs)`, call `tracker.record()` after
each epoch (or drive it with `TrajectoryCallback`; `prunelab.pruning.trajectory_hf` adapts it to a Hugging Face
`Trainer`), then `prune(model, PruneConfig(method="trajectory", sparsity=0.5))`: the tracker attached to the model
(or a saved one, option `tracker=PATH`) supplies the averages. `GradualPruning` re-applies masks after every
optimiser step, the sparsity rising on a cubic schedule (Zhu & Gupta, 2017) when pruning happens during training.
"""

from __future__ import annotations

import logging
import math
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from prunelab.config import PruneConfig, build
from prunelab.errors import PrunelabError, did_you_mean, first_line
from prunelab.models import prunable_layers, weight_2d
from prunelab.pruning.base import LayerResult, Pruner, PruneResult
from prunelab.pruning.masks import count_to_prune, nm_mask

log = logging.getLogger(__name__)

Weighting = Literal["sqrt", "linear", "uniform"]
WEIGHTINGS: dict[str, Callable[[int], float]] = {"sqrt": math.sqrt, "linear": float, "uniform": lambda i: 1.0}
MODEL_ATTR = "_prunelab_trajectory"  # where `TrajectoryTracker.attach` leaves the tracker on a model
RECORD_HINT = (
    "record one while training: tracker = prunelab.pruning.trajectory.TrajectoryTracker(model, last_k=K, "
    "total=EPOCHS), tracker.record() after each epoch (or the TrajectoryCallback / Trainer callback), then prune "
    "the same model object or pass --option tracker=PATH of tracker.save(PATH); `prunelab train-aware` does it all"
)


class TrajectoryTracker:
    """Weighted average of each tracked layer's weight over the last K snapshots, in O(parameters) memory."""

    def __init__(
        self,
        model: nn.Module | None,
        last_k: int | None = None,
        total: int | None = None,
        weighting: Weighting = "sqrt",
        targets: list[str] | None = None,
        ignore: list[str] | None = None,
    ) -> None:
        if weighting not in WEIGHTINGS:
            raise did_you_mean(weighting, WEIGHTINGS, "weighting")
        if last_k is not None and last_k < 1:
            raise PrunelabError(f"last_k must be at least 1, got {last_k}")
        self.model = model
        self.last_k, self.total, self.weighting = last_k, total, weighting
        self.targets, self.ignore = targets, list(ignore or [])
        self.snapshots = 0  # snapshots seen, in or before the window
        self.recorded = 0  # snapshots added to the sums
        self.weight_total = 0.0
        self.sums: dict[str, torch.Tensor] = {}
        self._warned_overrun = False
        if model is not None:
            layers = prunable_layers(model, targets, ignore)
            if not layers:
                raise PrunelabError("the target/ignore filter selects no layer to track")
            self.sums = {n: torch.zeros_like(weight_2d(m), dtype=torch.float32) for n, m in layers.items()}
            self.attach(model)

    @property
    def start(self) -> int:
        """The first snapshot (1-based) inside the window."""
        if self.last_k is None:
            return 1
        if self.total is None:
            raise PrunelabError("a window of the last K snapshots needs `total`, the number of snapshots planned")
        return max(1, self.total - self.last_k + 1)

    def attach(self, model: nn.Module) -> None:
        """Leave the tracker on the model, where the `trajectory` method finds it."""
        self.model = model
        object.__setattr__(model, MODEL_ATTR, self)  # a plain attribute, not a submodule or buffer

    def record(self) -> bool:
        """Add the current weights as the next snapshot; returns whether it fell inside the window."""
        if self.model is None:
            raise PrunelabError("this tracker has no model to record (it was loaded from a file)")
        self.snapshots += 1
        i = self.snapshots - self.start + 1
        if i < 1:
            return False
        if self.total is not None and self.snapshots > self.total and not self._warned_overrun:
            self._warned_overrun = True
            log.warning("snapshot %d is past the planned total %d: the average spans more", self.snapshots, self.total)
        weight = WEIGHTINGS[self.weighting](i)
        layers = prunable_layers(self.model, self.targets, self.ignore)
        with torch.no_grad():
            for name, acc in self.sums.items():
                acc.add_(weight_2d(layers[name]).to(acc.device, torch.float32), alpha=weight)
        self.weight_total += weight
        self.recorded += 1
        return True

    def average(self, name: str) -> torch.Tensor:
        """The weighted-average clone of one layer's weight (float32, a new tensor)."""
        if self.recorded == 0:
            raise PrunelabError(f"the trajectory has no snapshot in its window yet; {RECORD_HINT}")
        return self.sums[name] / self.weight_total

    def nbytes(self) -> int:
        """Bytes of tensor state held: one float32 per tracked weight, whatever the number of snapshots."""
        return sum(t.numel() * t.element_size() for t in self.sums.values())

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": "prunelab-trajectory/1",
            "last_k": self.last_k,
            "total": self.total,
            "weighting": self.weighting,
            "targets": self.targets,
            "ignore": self.ignore,
            "snapshots": self.snapshots,
            "recorded": self.recorded,
            "weight_total": self.weight_total,
            "sums": {n: t.detach().cpu() for n, t in self.sums.items()},
        }

    def save(self, path: str | Path) -> None:
        """Write the state atomically (torch format; loads with weights_only=True)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> TrajectoryTracker:
        """Load a saved state; with `model`, recording can go on and the tracker is attached to it."""
        try:
            state = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
            # torch's weights_only message spans a dozen lines; the first says what failed
            raise PrunelabError(f"cannot read trajectory file '{path}': {type(e).__name__}: {first_line(e)}") from e
        if not isinstance(state, dict) or state.get("format") != "prunelab-trajectory/1":
            raise PrunelabError(f"'{path}' is not a prunelab trajectory file (TrajectoryTracker.save)")
        tracker = cls(None, state["last_k"], state["total"], state["weighting"], state["targets"], state["ignore"])
        tracker.snapshots, tracker.recorded = state["snapshots"], state["recorded"]
        tracker.weight_total, tracker.sums = state["weight_total"], state["sums"]
        if model is not None:
            device = next(model.parameters()).device
            tracker.sums = {n: t.to(device) for n, t in tracker.sums.items()}
            tracker.attach(model)
        return tracker


def threshold_mask(score: torch.Tensor, prune_rate: float) -> torch.Tensor:
    """The paper's rule: prune where score < std(score) x PruneRate (torch.std, i.e. with Bessel's correction)."""
    return score < score.std().item() * prune_rate


def find_prune_rate(score: torch.Tensor, k: int, max_iter: int = 200) -> tuple[torch.Tensor, float]:
    """(mask, PruneRate) such that the threshold rule prunes exactly k weights.

    Bisection on the PruneRate: the count below the threshold is a step function of it. When a block of tied
    scores straddles k no threshold separates them; those at the threshold are then taken in index order.
    """
    n = score.numel()
    flat = score.reshape(-1)
    std = score.std().item() if n > 1 else 0.0
    if k <= 0:
        return torch.zeros_like(score, dtype=torch.bool), 0.0
    if std == 0.0 or not math.isfinite(std):
        lo = hi = 0.0  # all equal: no threshold separates anything
    else:
        lo, hi = 0.0, flat.max().item() / std * (1 + 1e-6) + 1e-12  # count(lo) = 0 <= k <= n = count(hi)
        for _ in range(max_iter):
            mid = (lo + hi) / 2
            if not lo < mid < hi:
                break  # float resolution reached: a block of ties straddles k
            count = int((flat < std * mid).sum())
            if count == k:
                return score < std * mid, mid
            lo, hi = (mid, hi) if count < k else (lo, mid)
    mask = flat < std * lo if lo > 0 else torch.zeros_like(flat, dtype=torch.bool)
    need = k - int(mask.sum())
    rest = torch.nonzero(~mask).squeeze(1)
    order = torch.argsort(flat[rest], stable=True)[:need]  # the smallest remaining, ties in index order
    mask[rest[order]] = True
    return mask.view_as(score), lo


class TrajectoryOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tracker: str | None = Field(None, description="saved tracker (TrajectoryTracker.save); default: the attached one")
    prune_rate: float | None = Field(None, gt=0, description="threshold mode: std(|W_avg|) x prune_rate per layer")
    weights: Literal["final", "average"] = Field("final", description="keep the final weights or the averaged clone")


class Trajectory(Pruner):
    """Registered method `trajectory`: masks from a recorded weight trajectory; no calibration data."""

    name = "trajectory"
    summary = "weighted average of |W| over the last K training epochs (Islam et al. 2025); needs a recorded trajectory"
    Options = TrajectoryOptions
    needs_trajectory = True  # the shared contract test skips methods that need state a fresh model cannot have

    def __init__(self, cfg: PruneConfig) -> None:
        options = build(TrajectoryOptions, cfg.options, f"options for method '{self.name}'")
        if options.prune_rate is None:
            super().__init__(cfg)
            return
        # Threshold mode: PruneRate decides and the sparsity is measured, so no sparsity is resolved.
        if cfg.pattern_obj.is_nm:
            raise PrunelabError("trajectory prune_rate (threshold mode) applies to unstructured pruning only")
        self.cfg, self.notes, self.pattern, self.options = cfg, [], cfg.pattern_obj, options
        self.sparsity = 0.0
        if cfg.sparsity is not None:
            self.notes.append(f"sparsity {cfg.sparsity:g} ignored: prune_rate is set, the sparsity is measured")

    @property
    def needs_calibration(self) -> bool:
        return False

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
