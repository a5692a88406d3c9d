"""Activation-sparsity thresholds (TEAL, arXiv 2408.14690): calibrate once, choose the level at run time.

Most entries of a Linear's input are near zero; zeroing those with |x| below a per-input threshold lets a decode
step skip the matching rows of W^T. The threshold for a wanted fraction s of zeros is the s-quantile of |x| over
calibration tokens. One table holds the thresholds of a grid of levels (0 to 0.9 by 0.05), so one saved model
serves every level.

Quantiles come from a fixed log2-spaced histogram of |x| per input (64 bins per octave over 2^-40 .. 2^24, exact
zeros counted apart), never from stored activations: memory is a few KiB per input whatever the token count, and
interpolating inside a bin keeps the achieved fraction within a small fraction of a percent of the requested one
(a test checks 1%). Layers that read the same tensor (q/k/v, gate/up) share one input, one histogram and one
threshold (calibration.collect_statistics finds them).

"Sparsity" of a model or block is weighted by the weights each input gates (sum of in x out of the layers reading
it): it is the share of weight reads a decode step skips, which is what the speed depends on.

Allocation across inputs:
- uniform: every input at the level.
- greedy (TEAL's block-wise greedy): per block, on inputs from the dense model, start from zero and repeatedly
  raise by `step` the input whose raise costs the least block output error per skipped weight; the path of
  allocations is interpolated so that each block, hence the whole model, averages exactly the level.
- greedy-time: the same walk, but the raise with the least error increase per predicted second saved (the
  measured per-shape cost of the kernels, `costs.py`), so sparsity goes where the kernel turns it into time. The
  level keeps its meaning (the weighted share of skipped weights), so at one level greedy-time reads as many
  weights as greedy and should be faster, at some error: compare the two on (perplexity, tok/s).

The greedy search costs (raises) x (inputs) block forwards on `greedy_tokens` tokens per block. It stops once the
path's average passes the highest calibrated level (nothing above it is ever read). `greedy_tokens` trades time
for noise: the error of a candidate is a mean over those tokens (the first calibration windows, so a seed gives
the same allocation), and 512 instead of 2048 makes the search 4x cheaper. `greedy_lazy` re-scores only the
best candidate of each raise (about 2 block forwards per raise instead of 4 on a Llama block: 119 against 260
on the tiny test Llama, with the allocation at 0.5 within one step of the full search there); it is exact when
the inputs' error increases add up, an approximation otherwise. Both stay off by default (TEAL's search).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab import calibration
from prunelab._util import atomic_dir, write_json_atomic
from prunelab.config.runtime import (
    ACT_ALLOCATIONS,
    DEFAULT_LEVELS,
    GREEDY_ALLOCATIONS,
    GREEDY_STEP,
    GREEDY_TOKENS,
    MAX_LEVEL,
)
from prunelab.errors import PrunelabError
from prunelab.models import block_linears, find_blocks, in_features, weight_2d
from prunelab.runtime.costs import KernelCosts, measure_kernel_costs

log = logging.getLogger(__name__)

TABLE_FILE = "activation_thresholds.json"
FORMAT = "prunelab-activation-thresholds"
VERSION = 1
ALLOCATIONS = ACT_ALLOCATIONS  # defined once, in config/runtime.py (with DEFAULT_LEVELS: 0 .. 0.9 by 0.05)
CALIBRATE_HINT = "run `prunelab calibrate-activations --model MODEL --output DIR` and load DIR"

LOG2_MIN, LOG2_MAX = -40.0, 24.0


class AbsHistogram(calibration.Statistic):
    """Counts of log2|x| in fixed bins (float64) plus the count of exact zeros: quantiles of |x| in O(bins)."""

    def __init__(self, in_features: int, device: torch.device, bins_per_octave: int = 64) -> None:
        super().__init__(in_features, device)
        self.bins = int((LOG2_MAX - LOG2_MIN) * bins_per_octave)
        self.counts = torch.zeros(self.bins, dtype=torch.float64, device=device)
        self.zeros = 0
        self.entries = 0

    def add(self, x: torch.Tensor) -> None:
        a = x.abs().reshape(-1)
        nz = a[a > 0]
        self.zeros += a.numel() - nz.numel()
        self.entries += a.numel()
        logs = torch.log2(nz).clamp_(LOG2_MIN, LOG2_MAX)
        self.counts += torch.histc(logs, bins=self.bins, min=LOG2_MIN, max=LOG2_MAX).double()
        self.tokens += x.shape[0]

    def threshold(self, fraction: float) -> float:
        """The t such that a share `fraction` of the seen entries has |x| <= t (0.0 when zeros alone cover it)."""
        if fraction <= 0.0 or self.entries == 0:
            return 0.0
        rank = fraction * self.entries - self.zeros
        if rank <= 0:
            return 0.0
        cum = self.counts.cumsum(0)
        b = int(
            torch.searchsorted(cum, torch.tensor([rank], dtype=torch.float64, device=cum.device)).clamp(
                max=self.bins - 1
            )
        )
        before = float(cum[b - 1]) if b > 0 else 0.0
        inside = float(self.counts[b])
        frac = min(max((rank - before) / inside, 0.0), 1.0) if inside > 0 else 1.0
        width = (LOG2_MAX - LOG2_MIN) / self.bins
        return float(2.0 ** (LOG2_MIN + (b + frac) * width))


@dataclass
class InputGroup:
    """One Linear input: the layers that read it, its width and the weights it gates."""

    name: str
    layers: list[str]
    in_features: int
    params: int
    block: int


@dataclass
class ThresholdTable:
    """Per level of the grid and per input group: the sparsity allocated and the |x| threshold that gives it."""

    levels: list[float]
    groups: list[InputGroup]
    sparsity: list[list[float]]  # [level][group]
    thresholds: list[list[float]]  # [level][group]
    allocation: str = "uniform"
    calibration: dict[str, Any] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)

    # ------------------------------------------------------------ queries

    def grid_text(self) -> str:
        lv = self.levels
        steps = {round(b - a, 6) for a, b in itertools.pairwise(lv)}
        if len(lv) > 2 and len(steps) == 1:
            return f"{lv[0]:g} to {lv[-1]:g} by {steps.pop():g}"
        return ", ".join(f"{v:g}" for v in lv)

    def check_level(self, level: float) -> None:
        if not isinstance(level, (int, float)) or math.isnan(level) or not 0.0 <= level < 1.0:
            raise PrunelabError(f"activation sparsity must be in [0, 1), got {level}")
        if level > self.levels[-1] + 1e-9:
            raise PrunelabError(
                f"activation sparsity {level:g} is above the calibrated grid ({self.grid_text()}); "
                "recalibrate with higher levels or choose one on the grid"
            )

    def _at(self, rows: list[list[float]], level: float) -> list[float]:
        """Values at `level`, linearly interpolated between the neighbouring grid levels."""
        self.check_level(level)
        lv = self.levels
        for i, v in enumerate(lv):
            if abs(v - level) <= 1e-9:
                return list(rows[i])
        hi = next(i for i, v in enumerate(lv) if v > level)
        lo = hi - 1
        w = (level - lv[lo]) / (lv[hi] - lv[lo])
        return [a + w * (b - a) for a, b in zip(rows[lo], rows[hi], strict=True)]

    def thresholds_at(self, level: float) -> dict[str, float]:
        """Threshold per layer name (layers of one group share theirs) at `level`."""
        values = self._at(self.thresholds, level)
        return {layer: t for g, t in zip(self.groups, values, strict=True) for layer in g.layers}

    def sparsity_at(self, level: float) -> dict[str, float]:
        """Allocated sparsity per group name at `level`."""
        return {g.name: s for g, s in zip(self.groups, self._at(self.sparsity, level), strict=True)}

    def average(self, level: float) -> float:
        """Model-wide sparsity at `level`, weighted by the weights each input gates."""
        values = self._at(self.sparsity, level)
        total = sum(g.params for g in self.groups)
        return sum(s * g.params for g, s in zip(self.groups, values, strict=True)) / total

    # ------------------------------------------------------------ files

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "allocation": self.allocation,
            "levels": self.levels,
            "calibration": self.calibration,
            "excluded": self.excluded,
            "groups": [g.__dict__ for g in self.groups],
            "sparsity": self.sparsity,
            "thresholds": self.thresholds,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "table") -> ThresholdTable:
        if d.get("format") != FORMAT:
            raise PrunelabError(f"{where} is not a {FORMAT} file")
        if int(d.get("version", 0)) > VERSION:
            raise PrunelabError(f"{where} has version {d['version']}; this prunelab reads up to {VERSION}")
        try:
            table = cls(
                levels=[float(v) for v in d["levels"]],
                groups=[InputGroup(**g) for g in d["groups"]],
                sparsity=[[float(v) for v in row] for row in d["sparsity"]],
                thresholds=[[float(v) for v in row] for row in d["thresholds"]],
                allocation=str(d.get("allocation", "uniform")),
                calibration=dict(d.get("calibration", {})),
                excluded=list(d.get("excluded", [])),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise PrunelabError(f"{where} is malformed ({type(e).__name__}: {e})") from e
        n = len(table.groups)
        if not table.levels or any(len(r) != n for r in (*table.sparsity, *table.thresholds)):
            raise PrunelabError(f"{where} is malformed: every level needs one value per input group")
        return table

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the side file into a model folder (atomically); the folder stays a plain Hugging Face folder."""
        path = Path(folder) / TABLE_FILE
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> ThresholdTable:
        """Read the side file of a model folder (or the file itself)."""
        path = Path(folder)
        if path.is_dir():
            path = path / TABLE_FILE
        if not path.is_file():
            raise PrunelabError(f"'{folder}' has no activation threshold table ({TABLE_FILE}); {CALIBRATE_HINT}")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise PrunelabError(f"cannot read threshold table '{path}': {e}") from e
        return cls.from_dict(d, where=f"'{path}'")


def find_table(folder: str | os.PathLike[str] | None) -> ThresholdTable | None:
    """The table beside a model folder, or None when there is none (the model is then a plain dense model)."""
    if folder is None or not (Path(folder) / TABLE_FILE).is_file():
        return None
    return ThresholdTable.load(folder)


def read_costs(path: str | os.PathLike[str]) -> KernelCosts:
    """Kernel costs to reuse: a calibrated folder or threshold table (greedy-time records its costs), or a
    costs JSON."""
    p = Path(path)
    if p.is_dir():
        p = p / TABLE_FILE
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise PrunelabError(f"cannot read kernel costs '{path}': {e}") from e
    if isinstance(d, dict) and d.get("format") == FORMAT:
        d = d.get("calibration", {}).get("kernel_costs")
        if d is None:
            raise PrunelabError(f"'{p}' records no kernel costs (calibrate it with allocation greedy-time)")
    if not isinstance(d, dict):
        raise PrunelabError(f"'{p}' holds no kernel costs")
    return KernelCosts.from_dict(d, where=f"'{p}'")


def write_calibrated_folder(
    source: str | os.PathLike[str],
    table: ThresholdTable,
    output: str | os.PathLike[str],
    overwrite: bool = False,
    link: bool = False,
) -> Path:
    """DIR = the model folder `source` (files copied, or hard-linked with `link`) plus the threshold table.

    Written atomically; plain transformers still loads DIR as the dense model (it ignores the side file).
    """
    source = Path(source)
    if not (source / "config.json").is_file():
        raise PrunelabError(f"'{source}' is not a Hugging Face model folder (no config.json)")
    with atomic_dir(output, overwrite=overwrite) as tmp:
        for item in source.iterdir():
            if item.name == TABLE_FILE or item.name.startswith("."):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
                continue
            if link:
                try:
                    os.link(item, tmp / item.name)
                    continue
                except OSError:
                    pass  # another file system: copy
            shutil.copy2(item, tmp / item.name)
        table.save(tmp)
    return Path(output)


# ---------------------------------------------------------------- calibration


def _check_levels(levels: tuple[float, ...] | list[float], max_sparsity: float) -> list[float]:
    lv = sorted({round(float(v), 9) for v in levels})
    if not lv or lv[0] < 0.0 or lv[-1] >= 1.0:
        raise PrunelabError(f"activation sparsity levels must lie in [0, 1), got {list(levels)}")
    if lv[-1] > max_sparsity:
        raise PrunelabError(f"highest level {lv[-1]:g} is above the per-input cap {max_sparsity:g}")
    if lv[0] != 0.0:
        lv.insert(0, 0.0)
    return lv


def _block_groups(
    stats: dict[str, calibration.Statistic], layers: dict[str, nn.Module], block: int
) -> list[InputGroup]:
    groups: list[InputGroup] = []
    by_stat: dict[int, InputGroup] = {}
    for name in layers:  # block order, so the owner (first reader) names the group
        if name not in stats:
            continue
        key = id(stats[name])
        w = weight_2d(layers[name])
        if key not in by_stat:
            by_stat[key] = InputGroup(name, [], in_features(layers[name]), 0, block)
            groups.append(by_stat[key])
        by_stat[key].layers.append(name)
        by_stat[key].params += w.numel()
    return groups


def calibrate_thresholds(
    model: nn.Module,
    calib: torch.Tensor,
    allocation: str = "uniform",
    levels: tuple[float, ...] | list[float] = DEFAULT_LEVELS,
    exclude: list[str] | None = None,
    batch_size: int = 1,
    greedy_tokens: int = GREEDY_TOKENS,
    greedy_step: float = GREEDY_STEP,
    max_sparsity: float = MAX_LEVEL,
    bins_per_octave: int = 64,
    record: dict[str, Any] | None = None,
    costs: KernelCosts | None = None,
    greedy_lazy: bool = False,
) -> ThresholdTable:
    """Calibrate thresholds for every Linear/Conv1D input inside the decoder blocks (lm_head never).

    `calib` is (n, L) token ids. `exclude` takes module-name filters as `block_linears` does (e.g.
    `re:layers\\.0\\.` for the first block). The model is not modified; every hook is removed on exit.
    `costs` (greedy-time): the kernel costs to allocate by; measured on this model when None. `greedy_lazy`:
    re-measure only the best candidate of each raise (`greedy_path`).
    """
    if allocation not in ALLOCATIONS:
        raise PrunelabError(f"unknown allocation '{allocation}'; use one of {', '.join(ALLOCATIONS)}")
    if not 0.0 < greedy_step < 1.0:
        raise PrunelabError(f"greedy step must be in (0, 1), got {greedy_step}")
    if greedy_tokens < 1:
        raise PrunelabError(f"greedy tokens must be at least 1, got {greedy_tokens}")
    lv = _check_levels(levels, max_sparsity)
    prefix, blocks = find_blocks(model)
    if allocation == "greedy-time" and costs is None:
        every = {
            n: m for i, b in enumerate(blocks) for n, m in block_linears(b, f"{prefix}.{i}", None, exclude).items()
        }
        costs = measure_kernel_costs(every)
    inputs = calibration.capture_block_inputs(model, blocks[0], calib, batch_size)
    groups: list[InputGroup] = []
    sparsity: list[list[float]] = [[] for _ in lv]
    thresholds: list[list[float]] = [[] for _ in lv]
    for i, block in enumerate(blocks):
        layers = block_linears(block, f"{prefix}.{i}", None, exclude)
        if layers:
            stats = calibration.collect_statistics(
                block,
                layers,
                inputs,
                lambda mod: AbsHistogram(in_features(mod), weight_2d(mod).device, bins_per_octave),
            )
            block_groups = _block_groups(stats, layers, i)
            hists = [stats[g.name] for g in block_groups]
            if allocation in GREEDY_ALLOCATIONS:
                per_level = greedy_block(
                    block, layers, block_groups, hists, inputs, lv, greedy_tokens, greedy_step, max_sparsity,
                    costs if allocation == "greedy-time" else None, greedy_lazy,
                )  # fmt: skip
            else:
                per_level = [[level] * len(block_groups) for level in lv]
            for k, alloc in enumerate(per_level):
                sparsity[k].extend(alloc)
                thresholds[k].extend(h.threshold(s) for h, s in zip(hists, alloc, strict=True))  # type: ignore[attr-defined]
            groups.extend(block_groups)
        if i + 1 < len(blocks):
            calibration.run_block(block, inputs, keep_outputs=True)
    if not groups:
        raise PrunelabError("no Linear layers left to calibrate (everything excluded?)")
    rec = {"tokens": int(calib.numel()), "samples": int(calib.shape[0]), "seqlen": int(calib.shape[1])}
    if allocation in GREEDY_ALLOCATIONS:
        rec.update(greedy_tokens=greedy_tokens, greedy_step=greedy_step, max_sparsity=max_sparsity)
        if greedy_lazy:
            rec["greedy_lazy"] = True
    if allocation == "greedy-time" and costs is not None:
        rec["kernel_costs"] = costs.to_dict()
    rec.update(record or {})
    return ThresholdTable(lv, groups, sparsity, thresholds, allocation, rec, list(exclude or []))


# ---------------------------------------------------------------- greedy allocation


def _subset(inputs: calibration.BlockInputs, tokens: int) -> calibration.BlockInputs:
    """The first batches of the block inputs holding about `tokens` tokens (at least one batch)."""
    sub = calibration.BlockInputs()
    for h, kw in zip(inputs.hidden, inputs.kwargs, strict=True):
        sub.hidden.append(h)
        sub.kwargs.append(kw)
        if sub.tokens >= tokens:
            break
    return sub


def _block_error(
    block: nn.Module,
    layers: dict[str, nn.Module],
    group_of: dict[str, int],
    cut: list[float],
    inputs: calibration.BlockInputs,
    reference: list[torch.Tensor],
) -> float:
    """Mean squared error of the block output when each layer's input is thresholded at its group's cut."""

    def hook_for(t: float):
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            if t <= 0.0 or not args:
                return None
            x = args[0]
            return (x.masked_fill(x.abs() <= t, 0.0), *args[1:])

        return hook

    handles = [m.register_forward_pre_hook(hook_for(cut[group_of[n]])) for n, m in layers.items() if n in group_of]
    total, count = 0.0, 0
    device = calibration.module_device(block)
    with calibration.hooks(handles), torch.no_grad():
        for hidden, kwargs, ref in zip(inputs.hidden, inputs.kwargs, reference, strict=True):
            out = block(calibration.to_device(hidden, device), **calibration.to_device(kwargs, device))
            out = out[0] if isinstance(out, (tuple, list)) else out
            total += float((out.float() - ref).square().sum())
            count += ref.numel()
    return total / max(count, 1)


Gain = Callable[[int, float, float], float]


def greedy_path(
    sizes: list[int],
    cost: Any,
    step: float,
    cap: float,
    gain: Gain | None = None,
    stop: float | None = None,
    lazy: bool = False,
) -> list[list[float]]:
    """TEAL's greedy walk: from all zeros, raise by `step` the group with the least error increase per unit of
    gain, until every group is at `cap` (or, with `stop`, until the weighted mean reaches `stop`).

    `cost(alloc) -> error`. `gain(group, from, to)`: what a raise buys; None is TEAL's skipped weights,
    (to - from) * size. Raises that gain nothing (a time model where the kernel never wins) come after every raise
    that gains, ordered among themselves by TEAL's score. Ties go to the first group. Returns every allocation
    along the way.

    `lazy`: a candidate's error increase is remembered from when it was last measured, and only the best-scoring
    one is re-measured, until the best is a fresh measurement (lazy greedy evaluation). About 2 block forwards
    per raise instead of one per group; the same walk whenever a raise's error increase does not shrink when
    other inputs get sparser (exactly so for errors that add up over inputs), otherwise an approximation.
    """
    total = float(sum(sizes))
    alloc = [0.0] * len(sizes)
    path = [list(alloc)]
    current = cost(alloc)
    delta: dict[int, float] = {}  # group -> error increase of its next raise, as last measured
    err_of: dict[int, float] = {}  # group -> error after its next raise, for those measured at this allocation

    def to_of(g: int) -> float:
        return min(cap, alloc[g] + step)

    def measure(g: int) -> None:
        trial = list(alloc)
        trial[g] = to_of(g)
        err_of[g] = cost(trial)
        delta[g] = err_of[g] - current

    def key(g: int) -> tuple[int, float, int]:
        weights = (to_of(g) - alloc[g]) * sizes[g]
        bought = weights if gain is None else gain(g, alloc[g], to_of(g))
        return (0, delta[g] / bought, g) if bought > 1e-15 else (1, delta[g] / weights, g)

    while stop is None or sum(a * w for a, w in zip(alloc, sizes, strict=True)) / total < stop - 1e-12:
        candidates = [g for g in range(len(sizes)) if alloc[g] < cap - 1e-12]
        if not candidates:
            break
        for g in candidates:
            if not lazy or g not in delta:
                measure(g)
        while True:
            g = min(candidates, key=key)
            if g in err_of:
                break
            measure(g)
        current = err_of[g]
        alloc[g] = to_of(g)
        path.append(list(alloc))
        del delta[g]
        err_of.clear()
    return path


def allocation_at(path: list[list[float]], sizes: list[int], level: float) -> list[float]:
    """The allocation on the greedy path whose weighted mean is exactly `level` (interpolating one step)."""
    total = float(sum(sizes))

    def mean(a: list[float]) -> float:
        return sum(s * w for s, w in zip(a, sizes, strict=True)) / total

    if level <= 0.0:
        return [0.0] * len(sizes)
    for a, b in itertools.pairwise(path):
        ma, mb = mean(a), mean(b)
        if ma - 1e-12 <= level <= mb + 1e-12:
            w = 0.0 if mb == ma else (level - ma) / (mb - ma)
            return [x + w * (y - x) for x, y in zip(a, b, strict=True)]
    raise PrunelabError(f"level {level:g} is beyond the greedy path's maximum {mean(path[-1]):g}")


def greedy_block(
    block: nn.Module,
    layers: dict[str, nn.Module],
    groups: list[InputGroup],
    hists: list[calibration.Statistic],
    inputs: calibration.BlockInputs,
    levels: list[float],
    tokens: int,
    step: float,
    cap: float,
    costs: KernelCosts | None = None,
    lazy: bool = False,
) -> list[list[float]]:
    """Per level, the greedy allocation of one block's input groups (on dense inputs to this block); with
    `costs`, raises are scored by predicted seconds saved instead of weights skipped."""
    sub = _subset(inputs, tokens)
    device = calibration.module_device(block)
    reference: list[torch.Tensor] = []
    with torch.no_grad():
        for hidden, kwargs in zip(sub.hidden, sub.kwargs, strict=True):
            out = block(calibration.to_device(hidden, device), **calibration.to_device(kwargs, device))
            reference.append((out[0] if isinstance(out, (tuple, list)) else out).float())
    group_of = {layer: k for k, g in enumerate(groups) for layer in g.layers}
    sizes = [g.params for g in groups]

    def cost(alloc: list[float]) -> float:
        cut = [h.threshold(s) for h, s in zip(hists, alloc, strict=True)]  # type: ignore[attr-defined]
        return _block_error(block, layers, group_of, cut, sub, reference)

    gain: Gain | None = None
    if costs is not None:
        shapes = [[tuple(weight_2d(layers[n]).shape[::-1]) for n in g.layers] for g in groups]

        def gain(g: int, lo: float, hi: float) -> float:
            return costs.group_saved(shapes[g], hi) - costs.group_saved(shapes[g], lo)

    calls = [0]

    def counted(alloc: list[float]) -> float:
        calls[0] += 1
        return cost(alloc)

    path = greedy_path(sizes, counted, step, cap, gain, stop=max(levels), lazy=lazy)
    log.info("greedy allocation: %s, %d raises, %d block forwards", groups[0].name.rsplit(".", 2)[0], len(path) - 1,
             calls[0])  # fmt: skip
    return [allocation_at(path, sizes, level) for level in levels]
