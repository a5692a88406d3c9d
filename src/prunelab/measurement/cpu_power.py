"""Power model of a CPU without an energy counter: TDP by CPU model, or watts per thread, plus RAM power.

The approach is CodeCarbon's (MIT; its data file `cpu_power.csv` is carried in `data/codecarbon/`, see the README
there), re-implemented without its dependencies:

- TDP: the CPU model string (`/proc/cpuinfo` "model name") is looked up in CodeCarbon's table of ~4,900 CPUs.
  First an exact, case-insensitive match; then the same after removing vendor noise ("(R)", "(TM)", " CPU",
  "@ 2.40GHz"); then a token match: the table entry whose set of lower-case alphanumeric words contains, or is
  contained in, the model's words, accepted only when exactly one entry matches (an ambiguous string such as
  "AMD EPYC", which a VM often reports, matches hundreds and is refused rather than guessed).
- No match: 4 W per logical CPU (CodeCarbon's last resort; TDP per hardware thread of common parts is 2-4 W).
- The package TDP is shared out over the machine's logical CPUs, and this process is charged for its CPU-seconds:
  CPU joules = TDP / logical CPUs x process CPU-seconds (CodeCarbon's process tracking mode).
- RAM: CodeCarbon's DIMM rule: the process's resident memory is rounded up to a plausible DIMM count and each
  DIMM draws 5 W (x86) or 1.5 W (ARM), with a diminishing share per DIMM beyond 4, 8 and 16 DIMMs, and at least
  two DIMMs' worth; RAM joules = that power x wall seconds.
"""

from __future__ import annotations

import csv
import functools
import math
import os
import platform
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from prunelab.config.bench import DEFAULT_CPU_WATTS

DEFAULT_WATTS_PER_THREAD = DEFAULT_CPU_WATTS  # CodeCarbon's last resort; the one definition is in config.bench
RAM_WATTS_PER_DIMM_X86 = 5.0
RAM_WATTS_PER_DIMM_ARM = 1.5
_NOISE = (
    (re.compile(r"\((R|TM)\)", re.I), ""),
    (re.compile(r" CPU @ .*$"), ""),
    (re.compile(r" CPU\b"), ""),
    (re.compile(r"\s*@\s*\d+(\.\d+)?\s*GHz", re.I), ""),
)


def data_file(name: str) -> Path:
    """A file of the CodeCarbon data carried in the package."""
    return Path(str(resources.files("prunelab.measurement") / "data" / "codecarbon" / name))


@functools.cache
def tdp_table() -> dict[str, float]:
    """CPU model name -> TDP in watts, from CodeCarbon's cpu_power.csv (4 old Celerons with a garbled TDP such as
    "27.29.5" are left out: a wrong number is worse than the per-thread fallback)."""
    table: dict[str, float] = {}
    with data_file("cpu_power.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                table[row["Name"].strip()] = float(row["TDP"])
            except (TypeError, ValueError):
                continue
    return table


def cpu_model() -> str | None:
    """The CPU model string: /proc/cpuinfo "model name" on Linux, else what the platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return platform.processor() or None


def _words(text: str) -> frozenset[str]:
    return frozenset(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def match_cpu(model: str, table: dict[str, float] | None = None) -> str | None:
    """The table entry for CPU model string `model`, or None when there is no unambiguous match."""
    table = tdp_table() if table is None else table
    by_lower = {name.lower(): name for name in table}
    if model.strip().lower() in by_lower:
        return by_lower[model.strip().lower()]
    cleaned = model
    for pattern, repl in _NOISE:
        cleaned = pattern.sub(repl, cleaned)
    cleaned = " ".join(cleaned.split())
    if cleaned.lower() in by_lower:
        return by_lower[cleaned.lower()]
    words = _words(cleaned)
    if not words:
        return None
    hits = [name for name in table if (w := _words(name)) and (w <= words or words <= w)]
    return hits[0] if len(hits) == 1 else None


@dataclass(frozen=True)
class CpuPower:
    """Watts charged per logical CPU at full load, and how that number was found (`method`)."""

    watts_per_thread: float
    method: str
    cpu_model: str | None
    tdp_w: float | None
    logical_cpus: int


def cpu_power(cpu_watts: float | None = None, model: str | None = None, logical_cpus: int | None = None) -> CpuPower:
    """The CPU power model: the user's watts per thread, else the TDP table, else 4 W per thread."""
    logical_cpus = logical_cpus or os.cpu_count() or 1
    model = model if model is not None else cpu_model()
    if cpu_watts is not None:
        return CpuPower(cpu_watts, "user-cpu-watts", model, cpu_watts * logical_cpus, logical_cpus)
    match = match_cpu(model) if model else None
    if match is not None:
        tdp = tdp_table()[match]
        return CpuPower(tdp / logical_cpus, f"tdp-table:{match}", model, tdp, logical_cpus)
    return CpuPower(
        DEFAULT_WATTS_PER_THREAD, "per-thread-fallback", model, DEFAULT_WATTS_PER_THREAD * logical_cpus, logical_cpus
    )


def is_arm() -> bool:
    machine = platform.machine().lower()
    return "arm" in machine or "aarch" in machine


def dimm_count(gib: float) -> int:
    """CodeCarbon's guess of how many DIMMs hold `gib` GiB."""
    if gib <= 2:
        return 1
    if gib <= 16:
        return 2
    if gib <= 64:
        return 4
    if gib <= 128:
        return 8
    for size in (128, 64, 32, 16, 8, 4):
        if size <= gib / 8:
            return min(math.ceil(gib / size), 32)
    return 8


def ram_watts(gib: float, arm: bool | None = None) -> float:
    """CodeCarbon's RAM power for `gib` GiB: per-DIMM watts with a diminishing share beyond 4, 8 and 16 DIMMs."""
    arm = is_arm() if arm is None else arm
    per = RAM_WATTS_PER_DIMM_ARM if arm else RAM_WATTS_PER_DIMM_X86
    floor = 3.0 if arm else 2 * per
    n = dimm_count(gib)
    shares = [1.0] * min(n, 4) + [0.9] * max(0, min(n, 8) - 4) + [0.8] * max(0, min(n, 16) - 8) + [0.7] * max(0, n - 16)
    return max(floor, per * sum(shares))
