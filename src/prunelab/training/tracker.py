"""The training-state tracker of training-aware pruning (Islam, Belhaouari, Bermak 2025).

Keeps a weighted-average clone of the weights over the last K snapshots (epochs), later snapshots counting more
(weight sqrt(i) for the i-th of the window), in O(parameters) memory: one float32 running sum per tracked layer,
sum_i w(i) W_i, and the scalar sum_i w(i). An exact sliding window would have to forget the oldest snapshot, which
needs the snapshot itself; so the window is fixed in advance instead: given the planned number of snapshots
(`total`, set from the Trainer's epoch count by the callback), accumulation starts at snapshot total - K + 1 and the
window's i-th snapshot gets weight w(i). Exact for any weighting, one tensor per layer. Snapshots past `total` keep
being added (with a warning): the average then covers more than K snapshots.

Usage (plain PyTorch): `tracker = TrajectoryTracker(model, last_k=10, total=epochs)`, call `tracker.record()` after
each epoch (or drive it with `prunelab.training.callbacks.TrajectoryCallback`; `prunelab.training.hf` adapts it to
a Hugging Face `Trainer`), then `prune(model, PruneConfig(method="trajectory", sparsity=0.5))`: the method
(`prunelab.pruning.trajectory`) reads the tracker attached to the model, or a saved one (option `tracker=PATH`).
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab.config.train_aware import Weighting
from prunelab.errors import PrunelabError, did_you_mean, first_line
from prunelab.models import prunable_layers, weight_2d

log = logging.getLogger(__name__)

WEIGHTINGS: dict[str, Callable[[int], float]] = {"sqrt": math.sqrt, "linear": float, "uniform": lambda i: 1.0}
MODEL_ATTR = "_prunelab_trajectory"  # where `TrajectoryTracker.attach` leaves the tracker on a model
RECORD_HINT = (
    "record one while training: tracker = prunelab.training.TrajectoryTracker(model, last_k=K, "
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
