"""Timing protocol and robust statistics.

Why median and inter-quartile range: on a shared machine single runs are hit by other processes, page faults and
frequency changes. The median ignores a few slow outliers and the IQR says how much the typical run moves, so two
results whose medians differ by less than their IQRs are noise, not a finding.

Quantiles are linearly interpolated between order statistics (Hyndman & Fan type 7, the default of numpy and R):
for sorted x_0..x_{n-1}, q(p) = x_k + (h - k)(x_{k+1} - x_k) with h = (n - 1) p and k = floor(h).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch


def quantile(values: Sequence[float], p: float) -> float:
    """Type-7 quantile of `values` at `p` in [0, 1]."""
    if not values:
        raise ValueError("quantile of an empty sequence")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    xs = sorted(values)
    h = (len(xs) - 1) * p
    k = math.floor(h)
    if k + 1 >= len(xs):
        return float(xs[-1])
    return float(xs[k] + (h - k) * (xs[k + 1] - xs[k]))


@dataclass(frozen=True)
class Stats:
    """Summary of repeated measurements: median, inter-quartile range, extremes and the raw values."""

    median: float
    iqr: float
    q1: float
    q3: float
    min: float
    max: float
    n: int
    values: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["values"] = list(self.values)
        return d


def summarize(values: Sequence[float]) -> Stats:
    """Median, quartiles and IQR of repeated measurements (type-7 quantiles)."""
    vals = tuple(float(v) for v in values)
    q1, q3 = quantile(vals, 0.25), quantile(vals, 0.75)
    return Stats(
        median=quantile(vals, 0.5), iqr=q3 - q1, q1=q1, q3=q3, min=min(vals), max=max(vals), n=len(vals), values=vals
    )


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so a timer measures the kernels and not just their launch."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_threads(threads: int | None) -> int:
    """Fix torch's intra-op thread count (None keeps the current one) and return the count in force."""
    if threads is not None:
        if threads < 1:
            from prunelab.errors import PrunelabError

            raise PrunelabError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def time_runs(
    fn: Callable[[], Any],
    warmup: int,
    repeats: int,
    device: torch.device | str = "cpu",
    cpu_seconds: list[float] | None = None,
) -> tuple[list[float], list[Any]]:
    """Call `fn` `warmup` times untimed, then `repeats` times timed; return (wall seconds per run, results).

    Warm-up runs absorb one-off costs (allocator growth, lazy initialisation, cold caches) that a user pays once,
    not per request. The device is synchronized before and after each timed call. If `cpu_seconds` is given, the
    CPU time of this process (all threads) per run is appended to it: on a shared machine wall time depends on
    how much CPU others leave us, while CPU time measures the work itself.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    seconds: list[float] = []
    results: list[Any] = []
    for _ in range(repeats):
        synchronize(device)
        cpu0, start = time.process_time(), time.perf_counter()
        out = fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        if cpu_seconds is not None:
            cpu_seconds.append(time.process_time() - cpu0)
        results.append(out)
    return seconds, results
