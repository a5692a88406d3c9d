"""Energy of a piece of work, from the best source available, always labelled with where it came from.

Sources, in the order `auto` tries them:
- `nvml`: NVIDIA's board energy counter (`nvmlDeviceGetTotalEnergyConsumption`, millijoules, Volta and newer),
  used when the work runs on a CUDA device and `pynvml` (PyPI: nvidia-ml-py) is installed. GPU board only.
- `rapl`: Intel/AMD RAPL package counters under /sys/class/powercap (`intel-rapl:N/energy_uj`), when readable
  (many kernels restrict them to root since CVE-2020-8694). They count the whole CPU package, so other processes'
  work is included: quiet machines give meaningful numbers, shared ones an upper bound.
  Only zones named `package-N` are summed: a `psys` zone (platform power, which already contains the packages)
  and `dram` zones are never added to them, or a laptop would count its CPU twice.
- `estimate`: no counter. CodeCarbon's power model (see `prunelab.measurement.cpu_power`): CPU joules =
  W x CPU-seconds of this process, W = the CPU's TDP from CodeCarbon's table / logical CPUs (`tdp-table:MODEL`),
  else 4 W per logical CPU (`per-thread-fallback`), or the user's `cpu_watts` (`user-cpu-watts`); plus RAM
  joules = CodeCarbon's DIMM power for this process's resident memory x wall seconds. CPU-seconds = user + system
  time of all threads, so the CPU part is "TDP x measured utilisation x wall time". It ignores idle power and
  power-supply losses, and is a labelled estimate, not a measurement (`is_estimate: true`).

Every reading carries `energy_source`, `method` (`rapl-package`, `nvml`, `tdp-table:<cpu model>`,
`per-thread-fallback`, `user-cpu-watts`) and `is_estimate`, and the seconds the meter itself spent (`overhead_s`):
reading a counter costs microseconds, which is why energy metering does not move the timings (the benchmark
also measures that directly).
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from prunelab._util import say_once
from prunelab.config.bench import ENERGY_CHOICES
from prunelab.errors import PrunelabError, did_you_mean
from prunelab.measurement.cpu_power import CpuPower, cpu_power, ram_watts

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
    method: str = ""

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
        return EnergyReading(
            joules, t - self._t0, self.source, self.is_estimate, self.scope, overhead, details, self.method
        )

    @abstractmethod
    def _begin(self) -> None: ...

    @abstractmethod
    def _end(self) -> tuple[float, dict[str, Any]]: ...

    @property
    def method(self) -> str:
        """How the number is obtained, more precisely than `source` (e.g. which power model)."""
        return self.source

    def describe(self) -> dict[str, Any]:
        return {
            "energy_source": self.source,
            "method": self.method,
            "is_estimate": self.is_estimate,
            "scope": self.scope,
        }


# ---------------------------------------------------------------- RAPL


def _zone_name(zone: Path) -> str:
    try:
        return (zone / "name").read_text().strip()
    except OSError:
        return ""


def rapl_domains(root: Path | None = None) -> tuple[list[Path], str | None]:
    """Readable top-level RAPL package zones under `root` (default /sys/class/powercap), or ([], why not).

    Only `intel-rapl:N` zones named `package-N` count (AMD's driver uses the same names): `psys` is the whole
    platform, packages included, and `dram` is outside the package, so adding either would mix scopes.
    """
    root = root or POWERCAP_ROOT
    if not root.is_dir():
        return [], f"{root} does not exist"
    top = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
    if not top:
        return [], f"no intel-rapl:N zone under {root}"
    zones = [z for z in top if _zone_name(z).startswith("package")]
    if not zones:
        names = ", ".join(f"{z.name}={_zone_name(z) or '?'}" for z in top)
        return [], f"no RAPL package zone under {root} (found {names})"
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
    method = "rapl-package"  # type: ignore[assignment]
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
        return total_uj / 1e6, {"zones": [_zone_name(z) or z.name for z in self.zones]}


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
    method = "nvml"  # type: ignore[assignment]
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


def _wall_seconds() -> float:
    return time.perf_counter()


def _rss_gib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**30


class EstimateMeter(EnergyMeter):
    """CodeCarbon's power model: CPU watts per logical CPU x CPU-seconds, plus RAM watts x wall seconds."""

    source = "estimate-cpu-model"
    is_estimate = True
    scope = "this process's CPU time and resident memory"

    def __init__(
        self,
        cpu_watts: float | None = None,
        cpu_count: int | None = None,
        include_ram: bool = True,
        power: CpuPower | None = None,
    ) -> None:
        super().__init__()
        if cpu_watts is not None and not (0 < cpu_watts < float("inf")):
            raise PrunelabError(f"cpu watts must be a positive number, got {cpu_watts}")
        self.power = power or cpu_power(cpu_watts, logical_cpus=cpu_count)
        self.cpu_watts = self.power.watts_per_thread
        self.cpu_count = self.power.logical_cpus
        self.include_ram = include_ram
        self._cpu0 = 0.0
        self._wall0 = 0.0

    @property
    def method(self) -> str:
        return self.power.method

    def _begin(self) -> None:
        self._cpu0 = _cpu_seconds()
        self._wall0 = _wall_seconds()

    def _end(self) -> tuple[float, dict[str, Any]]:
        cpu = _cpu_seconds() - self._cpu0
        wall = _wall_seconds() - self._wall0
        utilisation = cpu / (wall * self.cpu_count) if wall > 0 else 0.0
        cpu_j = self.cpu_watts * cpu
        rss = _rss_gib() if self.include_ram else 0.0
        ram_w = ram_watts(rss) if self.include_ram else 0.0
        ram_j = ram_w * wall
        return cpu_j + ram_j, {
            "model": "joules = cpu_watts x process CPU-seconds + ram_watts x wall seconds (CodeCarbon's model)",
            "method": self.power.method,
            "cpu_model": self.power.cpu_model,
            "cpu_watts_per_logical_cpu": self.cpu_watts,
            "assumed_tdp_w": self.power.tdp_w,
            "logical_cpus": self.cpu_count,
            "cpu_seconds": cpu,
            "utilisation": utilisation,
            "cpu_joules": cpu_j,
            "ram_gib": rss,
            "ram_watts": ram_w,
            "ram_joules": ram_j,
        }


# ---------------------------------------------------------------- selection


def select_meter(
    kind: str = "auto",
    device: str = "cpu",
    powercap_root: Path | None = None,
    cpu_watts: float | None = None,
) -> tuple[EnergyMeter | None, list[str]]:
    """The meter for `kind` and the reasons better sources were passed over (for `auto`).

    `cpu_watts` (estimate only): watts per logical CPU; None looks the CPU up in CodeCarbon's TDP table.

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
    # every sweep point selects a meter: say it once per run, not once per point
    say_once(log, logging.INFO, "energy-estimate", "no energy counter readable (%s); using the labelled CPU "
             "power-model estimate", "; ".join(skipped))  # fmt: skip
    return EstimateMeter(cpu_watts), skipped


def _cuda_index(device: str) -> int:
    _, _, idx = device.partition(":")
    return int(idx) if idx.isdigit() else 0
