"""Energy of a piece of work, from the best source available, always labelled with where it came from.

Sources, in the order `auto` tries them:
- `nvml`: NVIDIA's board energy counter (`nvmlDeviceGetTotalEnergyConsumption`, millijoules, Volta and newer),
  used when the work runs on a CUDA device and `pynvml` (PyPI: nvidia-ml-py) is installed. GPU board only.
- `rapl`: Intel/AMD RAPL package counters under /sys/class/powercap (`intel-rapl:N/energy_uj`), when readable
  (many kernels restrict them to root since CVE-2020-8694). They count the whole CPU package, so other processes'
  work is included: quiet machines give meaningful numbers, shared ones an upper bound.
- `estimate`: no counter. A CPU power model: energy = W x CPU-seconds of this process, where W is the power of one
  logical CPU at full load (default 4 W; override with `cpu_watts`). CPU-seconds = user + system time of all
  threads, so this is "TDP x measured utilisation x wall time" with TDP = W x logical CPUs. Why 4 W: TDP per
  hardware thread of common parts is ~2-4 W (EPYC 7763: 280 W / 128 = 2.2 W; Xeon 8380: 270 W / 80 = 3.4 W;
  Core i7-1165G7: 28 W / 8 = 3.5 W); we take the upper end so the estimate errs high. It ignores DRAM, idle
  power and power-supply losses, and is a labelled estimate, not a measurement (`is_estimate: true`).

Every reading carries `energy_source` and `is_estimate`, and the seconds the meter itself spent (`overhead_s`):
reading a counter costs microseconds, which is why energy metering does not move the timings (the benchmark
also measures that directly).
"""

from __future__ import annotations

import logging
import os
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from prunelab.config.bench import DEFAULT_CPU_WATTS, ENERGY_CHOICES
from prunelab.errors import PrunelabError, did_you_mean

log = logging.getLogger(__name__)

POWERCAP_ROOT = Path("/sys/class/powercap")


@dataclass
class EnergyReading:
    """Energy of one measured span."""

    joules: float
    seconds: float
    energy_source: str
    is_estimate: bool
    scope: str
    overhead_s: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EnergyMeter(ABC):
    """Start/stop energy measurement. `stop` returns the energy since the last `start`."""

    source: ClassVar[str]
    is_estimate: ClassVar[bool]
    scope: ClassVar[str]

    def __init__(self) -> None:
        self._t0 = 0.0
        self._overhead = 0.0

    def start(self) -> None:
        t = time.perf_counter()
        self._begin()
        self._t0 = time.perf_counter()
        self._overhead = self._t0 - t

    def stop(self) -> EnergyReading:
        t = time.perf_counter()
        joules, details = self._end()
        overhead = self._overhead + time.perf_counter() - t
        return EnergyReading(joules, t - self._t0, self.source, self.is_estimate, self.scope, overhead, details)

    @abstractmethod
    def _begin(self) -> None: ...

    @abstractmethod
    def _end(self) -> tuple[float, dict[str, Any]]: ...

    def describe(self) -> dict[str, Any]:
        return {"energy_source": self.source, "is_estimate": self.is_estimate, "scope": self.scope}


# ---------------------------------------------------------------- RAPL


def rapl_domains(root: Path | None = None) -> tuple[list[Path], str | None]:
    """Readable top-level RAPL package zones under `root` (default /sys/class/powercap), or ([], why not)."""
    root = root or POWERCAP_ROOT
    if not root.is_dir():
        return [], f"{root} does not exist"
    zones = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
    if not zones:
        return [], f"no intel-rapl:N zone under {root}"
    readable: list[Path] = []
    problems: list[str] = []
    for zone in zones:
        try:
            int((zone / "energy_uj").read_text().strip())
            readable.append(zone)
        except (OSError, ValueError) as e:
            problems.append(f"{zone.name}/energy_uj: {e.__class__.__name__}")
    if not readable:
        return [], "not readable (" + "; ".join(problems) + "; usually root-only)"
    return readable, None


class RaplMeter(EnergyMeter):
    source = "rapl"
    is_estimate = False
    scope = "cpu-packages (all processes)"

    def __init__(self, root: Path | None = None) -> None:
        super().__init__()
        root = root or POWERCAP_ROOT
        zones, why = rapl_domains(root)
        if not zones:
            raise PrunelabError(f"RAPL energy counters unavailable: {why}; use --energy auto or estimate")
        self.zones = zones
        self.ranges = []
        for z in zones:
            try:
                self.ranges.append(int((z / "max_energy_range_uj").read_text().strip()))
            except (OSError, ValueError):
                self.ranges.append(2**32)  # a common counter width; only used if the counter wraps
        self._start: list[int] = []

    def _read(self) -> list[int]:
        return [int((z / "energy_uj").read_text().strip()) for z in self.zones]

    def _begin(self) -> None:
        self._start = self._read()

    def _end(self) -> tuple[float, dict[str, Any]]:
        total_uj = 0
        for before, after, span in zip(self._start, self._read(), self.ranges, strict=True):
            total_uj += after - before if after >= before else after + span - before  # counter wrapped
        names = []
        for z in self.zones:
            try:
                names.append((z / "name").read_text().strip())
            except OSError:
                names.append(z.name)
        return total_uj / 1e6, {"zones": names}


# ---------------------------------------------------------------- NVML


def _import_pynvml() -> Any:
    import pynvml  # optional dependency

    return pynvml


def nvml_status(device_index: int = 0) -> str | None:
    """None when NVML energy counters work for this GPU, else why not."""
    try:
        nvml = _import_pynvml()
    except ImportError:
        return "pynvml is not installed (pip install nvidia-ml-py)"
    try:
        nvml.nvmlInit()
        handle = nvml.nvmlDeviceGetHandleByIndex(device_index)
        nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception as e:  # NVMLError subclasses, driver missing, old GPU
        return f"NVML energy counter unavailable: {e}"
    return None


class NvmlMeter(EnergyMeter):
    source = "nvml"
    is_estimate = False
    scope = "gpu-board"

    def __init__(self, device_index: int = 0) -> None:
        super().__init__()
        why = nvml_status(device_index)
        if why:
            raise PrunelabError(f"{why}; use --energy auto or estimate")
        self.nvml = _import_pynvml()
        self.device_index = device_index
        self.handle = self.nvml.nvmlDeviceGetHandleByIndex(device_index)
        self._start_mj = 0

    def _begin(self) -> None:
        self._start_mj = self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)

    def _end(self) -> tuple[float, dict[str, Any]]:
        end = self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        return (end - self._start_mj) / 1e3, {"device_index": self.device_index}


# ---------------------------------------------------------------- estimate


def _cpu_seconds() -> float:
    """User + system CPU time of all threads of this process, at clock_gettime resolution (not 10 ms ticks)."""
    return time.process_time()


class EstimateMeter(EnergyMeter):
    """CPU power model: watts per logical CPU at full load x CPU-seconds this process used."""

    source = "estimate-cpu-model"
    is_estimate = True
    scope = "this process's CPU time"

    def __init__(self, cpu_watts: float = DEFAULT_CPU_WATTS, cpu_count: int | None = None) -> None:
        super().__init__()
        if cpu_watts <= 0:
            raise PrunelabError(f"cpu watts must be positive, got {cpu_watts}")
        self.cpu_watts = cpu_watts
        self.cpu_count = cpu_count or os.cpu_count() or 1
        self._cpu0 = 0.0
        self._wall0 = 0.0

    def _begin(self) -> None:
        self._cpu0 = _cpu_seconds()
        self._wall0 = time.perf_counter()

    def _end(self) -> tuple[float, dict[str, Any]]:
        cpu = _cpu_seconds() - self._cpu0
        wall = time.perf_counter() - self._wall0
        utilisation = cpu / (wall * self.cpu_count) if wall > 0 else 0.0
        return self.cpu_watts * cpu, {
            "model": "joules = cpu_watts x process CPU-seconds (= TDP x utilisation x wall time)",
            "cpu_watts_per_logical_cpu": self.cpu_watts,
            "assumed_tdp_w": self.cpu_watts * self.cpu_count,
            "cpu_seconds": cpu,
            "utilisation": utilisation,
        }


# ---------------------------------------------------------------- selection


def select_meter(
    kind: str = "auto",
    device: str = "cpu",
    powercap_root: Path | None = None,
    cpu_watts: float = DEFAULT_CPU_WATTS,
) -> tuple[EnergyMeter | None, list[str]]:
    """The meter for `kind` and the reasons better sources were passed over (for `auto`).

    An explicitly requested source that is unavailable is an error, not a silent fallback.
    """
    powercap_root = powercap_root or POWERCAP_ROOT
    if kind not in ENERGY_CHOICES:
        raise did_you_mean(kind, ENERGY_CHOICES, "energy source")
    if kind == "off":
        return None, []
    if kind == "rapl":
        return RaplMeter(powercap_root), []
    if kind == "nvml":
        return NvmlMeter(_cuda_index(device)), []
    if kind == "estimate":
        return EstimateMeter(cpu_watts), []
    skipped: list[str] = []
    if device.startswith("cuda"):
        try:
            return NvmlMeter(_cuda_index(device)), skipped
        except PrunelabError as e:
            skipped.append(f"nvml: {str(e).removesuffix('; use --energy auto or estimate')}")
    else:
        skipped.append("nvml: not a CUDA run")
    try:
        return RaplMeter(powercap_root), skipped
    except PrunelabError as e:
        skipped.append(f"rapl: {str(e).removesuffix('; use --energy auto or estimate')}")
    log.info("no energy counter readable (%s); using the labelled CPU power-model estimate", "; ".join(skipped))
    return EstimateMeter(cpu_watts), skipped


def _cuda_index(device: str) -> int:
    _, _, idx = device.partition(":")
    return int(idx) if idx.isdigit() else 0
