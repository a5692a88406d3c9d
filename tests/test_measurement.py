"""Measurement primitives: statistics, energy source selection, carbon arithmetic, per-phase peak memory."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from prunelab.errors import PrunelabError
from prunelab.measurement import energy
from prunelab.measurement.bench import BenchConfig, bench_intensity, carbon_report
from prunelab.measurement.carbon import grams_co2eq, grid_intensity
from prunelab.measurement.timing import quantile, summarize, time_runs

# ---------------------------------------------------------------- statistics


def test_median_iqr_even_count_hand_computed() -> None:
    # Type-7 quantiles of 1..8: h = 7p; q1 = x[1] + 0.75 (x[2] - x[1]) = 2.75, q3 = x[5] + 0.25 = 6.25.
    # Nearest-rank quartiles would give 2 and 6 (IQR 4), the exclusive method 2.5 and 6.5.
    s = summarize([8, 3, 1, 6, 2, 7, 5, 4])
    assert s.median == 4.5
    assert s.q1 == 2.75 and s.q3 == 6.25
    assert s.iqr == 3.5
    assert (s.min, s.max, s.n) == (1, 8, 8)
    assert s.values == (8, 3, 1, 6, 2, 7, 5, 4)  # raw order kept for inspection


def test_median_iqr_odd_count_and_single_value() -> None:
    s = summarize([7.0, 1.0, 3.0])
    assert (s.q1, s.median, s.q3, s.iqr) == (2.0, 3.0, 5.0, 3.0)
    one = summarize([4.2])
    assert (one.median, one.iqr) == (4.2, 0.0)
    assert quantile([10, 20], 0.1) == pytest.approx(11.0)
    with pytest.raises(ValueError):
        quantile([], 0.5)


def test_time_runs_counts_warmup_and_repeats() -> None:
    calls: list[int] = []

    def fn() -> int:
        calls.append(1)
        time.sleep(0.002)
        return len(calls)

    seconds, results = time_runs(fn, warmup=2, repeats=3)
    assert len(calls) == 5 and results == [3, 4, 5]  # warm-up results are not timed or returned
    assert len(seconds) == 3 and all(s >= 0.002 for s in seconds)


# ---------------------------------------------------------------- energy


def _zone(root: Path, name: str, label: str, uj: int, span: int = 2_000_000) -> Path:
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "name").write_text(label + "\n")
    (zone / "energy_uj").write_text(f"{uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{span}\n")
    return zone


def test_rapl_chosen_when_readable_and_wraparound_handled(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # NVML absent
    pkg0 = _zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000)
    core = _zone(tmp_path, "intel-rapl:0:0", "core", 500_000)  # a sub-zone: part of package-0, never added
    pkg1 = _zone(tmp_path, "intel-rapl:1", "package-1", 1_900_000)
    meter, skipped = energy.select_meter("auto", "cpu", powercap_root=tmp_path)
    assert isinstance(meter, energy.RaplMeter)
    assert any(s.startswith("nvml") for s in skipped)
    meter.start()
    (pkg0 / "energy_uj").write_text("3500000\n")  # +2.5 J
    (core / "energy_uj").write_text("1500000\n")  # +1.0 J that must not be counted
    (pkg1 / "energy_uj").write_text("100000\n")  # wrapped: 2_000_000 - 1_900_000 + 100_000 = +0.2 J
    reading = meter.stop()
    assert reading.joules == pytest.approx(2.7)
    assert reading.energy_source == "rapl" and reading.is_estimate is False
    assert reading.details["zones"] == ["package-0", "package-1"]
    assert 0 <= reading.overhead_s < 0.1


def test_unreadable_rapl_falls_back_to_estimate_but_explicit_rapl_is_an_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    zone = tmp_path / "intel-rapl:0"
    (zone / "energy_uj").mkdir(parents=True)  # reading it fails like a root-only counter does
    meter, skipped = energy.select_meter("auto", "cpu", powercap_root=tmp_path)
    assert isinstance(meter, energy.EstimateMeter) and meter.is_estimate
    assert any(s.startswith("rapl") and "not readable" in s for s in skipped)
    with pytest.raises(PrunelabError, match="RAPL"):
        energy.select_meter("rapl", "cpu", powercap_root=tmp_path)
    meter, _ = energy.select_meter("auto", "cpu", powercap_root=tmp_path / "missing")
    assert isinstance(meter, energy.EstimateMeter)


def test_nvml_absent_on_cuda_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    meter, skipped = energy.select_meter("auto", "cuda:0", powercap_root=tmp_path)
    assert isinstance(meter, energy.EstimateMeter)
    assert any("pynvml is not installed" in s for s in skipped)
    with pytest.raises(PrunelabError, match="pynvml"):
        energy.select_meter("nvml", "cuda:0", powercap_root=tmp_path)


def test_nvml_preferred_on_cuda_when_present(tmp_path: Path, monkeypatch) -> None:
    counter = iter([1000, 1000, 3500])  # millijoules: probe, start, stop
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: f"gpu{i}",
        nvmlDeviceGetTotalEnergyConsumption=lambda h: next(counter),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    _zone(tmp_path, "intel-rapl:0", "package-0", 0)  # readable RAPL too: NVML must still win on a GPU run
    meter, _ = energy.select_meter("auto", "cuda:1", powercap_root=tmp_path)
    assert isinstance(meter, energy.NvmlMeter) and meter.device_index == 1
    meter.start()
    reading = meter.stop()
    assert reading.joules == pytest.approx(2.5) and reading.energy_source == "nvml"


def test_estimate_is_watts_times_cpu_seconds(monkeypatch) -> None:
    cpu = iter([5.0, 7.5])
    monkeypatch.setattr(energy, "_cpu_seconds", lambda: next(cpu))
    meter = energy.EstimateMeter(cpu_watts=10.0, cpu_count=4)
    meter.start()
    reading = meter.stop()
    assert reading.joules == pytest.approx(25.0)  # 10 W x 2.5 CPU-seconds
    assert reading.is_estimate is True and reading.energy_source == "estimate-cpu-model"
    assert reading.details["assumed_tdp_w"] == 40.0


def test_energy_choice_validation() -> None:
    meter, _ = energy.select_meter("off")
    assert meter is None
    with pytest.raises(PrunelabError, match="Did you mean 'estimate'"):
        energy.select_meter("estimat")


# ---------------------------------------------------------------- carbon


def test_carbon_arithmetic() -> None:
    assert grams_co2eq(3.6e6, 100.0) == pytest.approx(100.0)  # 1 kWh at 100 g/kWh
    assert grams_co2eq(1800.0, 400.0) == pytest.approx(0.2)  # 0.5 Wh at 400 g/kWh
    fra = grid_intensity("fra")
    assert (fra.g_per_kwh, fra.country) == (67.0, "FRA")
    assert grid_intensity().country == "WLD" and grid_intensity().g_per_kwh == 475.0
    user = grid_intensity(g_per_kwh=123.0)
    assert (user.g_per_kwh, user.country, user.source) == (123.0, None, "user")
    with pytest.raises(PrunelabError, match="Did you mean 'FRA'"):
        grid_intensity("FRX")
    with pytest.raises(PrunelabError, match="not both"):
        grid_intensity("FRA", 10.0)


def test_carbon_report_per_1k_tokens_and_per_million_requests() -> None:
    cfg = BenchConfig(prompt_lens=[128], gen_len=50, grid_intensity=400.0)
    energy_report = {"joules": 10.0, "joules_per_token": 0.2, "joules_per_1k_prefill_tokens": 90.0, "is_estimate": True}
    c = carbon_report(energy_report, bench_intensity(cfg), cfg)
    # 0.2 J/token x 1000 = 200 J = 200 / 3.6e6 kWh x 400 g/kWh = 0.02222 g
    assert c["g_co2eq_per_1k_tokens"] == pytest.approx(200 / 3.6e6 * 400)
    assert c["g_co2eq_per_1k_prefill_tokens"] == pytest.approx(90 / 3.6e6 * 400)
    # 10 J per request x 1e6 = 1e7 J = 2.778 kWh x 400 = 1111.1 g
    assert c["g_co2eq_per_million_requests"] == pytest.approx(1e7 / 3.6e6 * 400)
    assert c["request_shape"] == {"prompt_tokens": 128, "generated_tokens": 50, "batch": 1}


# ---------------------------------------------------------------- memory


_PHASES_SCRIPT = """
import json, sys, time
import numpy as np
from prunelab.measurement import memory

def hold(mb):
    block = np.ones(mb * 2**20 // 8)  # touched pages: resident
    time.sleep(0.05)
    del block

if sys.argv[1] == "sampled":
    memory._reset_hwm = lambda: False
elif not memory._reset_hwm():
    print(json.dumps(None)); sys.exit(0)
with memory.PeakMemory("big") as big:
    hold(120)
with memory.PeakMemory("small") as small:
    hold(10)
print(json.dumps([big.to_dict(), small.to_dict()]))
"""


@pytest.mark.parametrize("method", ["vmhwm-reset", "sampled"])
def test_peak_memory_is_per_phase(method: str) -> None:
    # A fresh process: inside the test session, memory freed by earlier tests can be reused without new pages.
    out = subprocess.run(
        [sys.executable, "-c", _PHASES_SCRIPT, method], capture_output=True, text=True, check=True, timeout=120
    )
    phases = json.loads(out.stdout.strip().splitlines()[-1])
    if phases is None:
        pytest.skip("this kernel does not allow resetting VmHWM")
    big, small = phases
    assert big["method"] == method
    assert big["peak_rss_mb"] >= big["start_rss_mb"] + 100
    # The second phase's peak is its own, not the process's earlier high-water mark.
    assert small["peak_rss_mb"] < big["peak_rss_mb"] - 80
    assert small["phase"] == "small"
