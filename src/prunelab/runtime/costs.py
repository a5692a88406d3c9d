"""Predicted seconds a decode token saves per layer shape at a sparsity: what `greedy-time` allocation trades
output error against.

TEAL's greedy counts skipped weights, as if every skipped weight saved the same time. It does not: the gather
kernels gain least at input width 1536 (down_proj; see `kernels.py`), and below a break-even kept fraction a
shape runs dense and saves nothing. The runtime chooses one kernel per layer shape at load by measuring them
(`sparse._choose` -> `kernels.measure_act_kernels`); this module measures the same thing once, on a grid of kept
fractions, over every layer of each shape cycled (weights out of cache, as in a decode step), batch 1:

    sparse[shape][i] = the fastest gather kernel's seconds per token of one layer at keeps[i]
    dense[shape]     = the dense layer's seconds (median over the grid's measurements)

The saving of one layer at sparsity s is max(0, dense - sparse(1 - s)) made non-decreasing in s (noise), then
replaced by its least concave majorant. Why the envelope: the raw saving is zero up to the break-even and grows
after it, and a greedy walk that looks one step ahead would never start on a shape whose first steps save
nothing, pushing every other input to the cap first. On the envelope, a raise is credited its share of the
saving that reaching the saving region brings (the usual convex relaxation of a greedy knapsack); where gathering
never wins the saving is 0 and such inputs are raised last.

Measured times are noisy (and the calibration machine may not be the deployment one), so the costs are recorded
in the threshold table (`calibration.kernel_costs`) and can be reused (`cost_table`): the same costs give the same
allocation. Tests inject a hand-made `KernelCosts`.
"""

from __future__ import annotations

import itertools
import logging
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from prunelab.errors import PrunelabError
from prunelab.models import weight_2d
from prunelab.runtime import kernels as K

log = logging.getLogger(__name__)

FORMAT = "prunelab-kernel-costs"
# Kept fractions measured: 0.05 .. 0.95 by 0.05 (sparsity 0.95 .. 0.05; keep 1 is the dense layer).
COST_KEEPS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))


def shape_key(in_features: int, out_features: int) -> str:
    return f"{in_features}x{out_features}"


def _concave_majorant(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Upper hull of points sorted by x (the least concave function above them)."""
    hull: list[tuple[float, float]] = []
    for p in points:
        while len(hull) >= 2:
            (ax, ay), (bx, by) = hull[-2], hull[-1]
            if (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax) >= 0:  # b on or below the segment a-p
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def _interp(points: list[tuple[float, float]], x: float) -> float:
    if x <= points[0][0]:
        return points[0][1]
    for (ax, ay), (bx, by) in itertools.pairwise(points):
        if x <= bx:
            return ay + (x - ax) / (bx - ax) * (by - ay) if bx > ax else by
    return points[-1][1]


@dataclass
class KernelCosts:
    """Per layer shape ("in x out"): dense seconds per token, and the best gather kernel's at each kept fraction."""

    keeps: list[float]
    dense: dict[str, float]
    sparse: dict[str, list[float]]
    kernels: dict[str, list[str]] = field(default_factory=dict)
    rows: int = 1
    threads: int | None = None
    _curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        order = sorted(range(len(self.keeps)), key=self.keeps.__getitem__)
        if not self.keeps or any(not 0.0 <= k < 1.0 for k in self.keeps):
            raise PrunelabError(f"kernel costs: kept fractions must lie in [0, 1), got {self.keeps}")
        for key, times in self.sparse.items():
            if key not in self.dense or len(times) != len(self.keeps):
                raise PrunelabError(f"kernel costs are malformed for shape {key}: one time per kept fraction needed")
        self.keeps = [self.keeps[i] for i in order]
        self.sparse = {k: [v[i] for i in order] for k, v in self.sparse.items()}
        self.kernels = {k: [v[i] for i in order] for k, v in self.kernels.items() if len(v) == len(order)}

    def curve(self, key: str) -> list[tuple[float, float]]:
        """(sparsity, seconds saved) points of one layer of shape `key`: non-decreasing, concave, from (0, 0)."""
        if key not in self._curves:
            if key not in self.dense:
                raise PrunelabError(f"kernel costs have no shape {key} (measured: {', '.join(self.dense)})")
            pts = [(0.0, 0.0)]
            for keep, t in sorted(zip(self.keeps, self.sparse[key], strict=True), key=lambda p: -p[0]):
                pts.append((1.0 - keep, max(pts[-1][1], self.dense[key] - t, 0.0)))
            self._curves[key] = _concave_majorant(pts)
        return self._curves[key]

    def saved(self, in_features: int, out_features: int, sparsity: float) -> float:
        """Seconds per token one layer of this shape saves at `sparsity` (envelope; flat past the grid)."""
        return _interp(self.curve(shape_key(in_features, out_features)), sparsity)

    def group_saved(self, shapes: Iterable[tuple[int, int]], sparsity: float) -> float:
        return sum(self.saved(i, o, sparsity) for i, o in shapes)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "keeps": self.keeps, "dense": self.dense, "sparse": self.sparse,
                "kernels": self.kernels, "rows": self.rows, "threads": self.threads}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "kernel costs") -> KernelCosts:
        if d.get("format") != FORMAT:
            raise PrunelabError(f"{where} holds no {FORMAT} record")
        try:
            return cls(
                keeps=[float(v) for v in d["keeps"]],
                dense={str(k): float(v) for k, v in d["dense"].items()},
                sparse={str(k): [float(x) for x in v] for k, v in d["sparse"].items()},
                kernels={str(k): [str(x) for x in v] for k, v in d.get("kernels", {}).items()},
                rows=int(d.get("rows", 1)),
                threads=d.get("threads"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PrunelabError(f"{where} is malformed ({type(e).__name__}: {e})") from e


def _transposed(module: nn.Module) -> torch.Tensor:
    return module.weight.detach() if isinstance(module, Conv1D) else module.weight.detach().t().contiguous()


def measure_kernel_costs(
    layers: dict[str, nn.Module], keeps: Iterable[float] = COST_KEEPS, rows: int = 1, repeats: int = 5
) -> KernelCosts:
    """Time every activation kernel on every layer shape of `layers` (all layers of a shape cycled), per keep."""
    by_shape: dict[str, list[nn.Module]] = {}
    for mod in layers.values():
        out_f, in_f = weight_2d(mod).shape
        by_shape.setdefault(shape_key(in_f, out_f), []).append(mod)
    keeps = sorted(float(k) for k in keeps)
    dense: dict[str, float] = {}
    sparse: dict[str, list[float]] = {}
    chosen: dict[str, list[str]] = {}
    for key, mods in by_shape.items():
        wts = [_transposed(m) for m in mods]
        biases = [m.bias for m in mods]
        fns = [m.forward for m in mods]
        dense_runs: list[float] = []
        sparse[key], chosen[key] = [], []
        for keep in keeps:
            times = K.measure_act_kernels(wts, biases, keep, rows, fns, repeats=repeats)
            per = {k: v / len(mods) for k, v in times.items()}
            dense_runs.append(per.pop("dense"))
            best = min(per, key=per.__getitem__)
            sparse[key].append(per[best])
            chosen[key].append(best)
        dense[key] = statistics.median(dense_runs)
        del wts
        log.info("kernel costs %s: dense %.1f us, gather %s us", key, dense[key] * 1e6,
                 ", ".join(f"{k:g}:{t * 1e6:.0f}" for k, t in zip(keeps, sparse[key], strict=True)))  # fmt: skip
    return KernelCosts(keeps, dense, sparse, chosen, rows, torch.get_num_threads())
