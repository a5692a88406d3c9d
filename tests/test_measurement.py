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
from prunelab.measurement import cpu_power, energy
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
    (zone / "name").write_text("package-0\n")
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


def test_estimate_is_watts_times_cpu_seconds_plus_ram(monkeypatch) -> None:
    cpu = iter([5.0, 7.5])
    wall = iter([100.0, 102.0])
    monkeypatch.setattr(energy, "_cpu_seconds", lambda: next(cpu))
    monkeypatch.setattr(energy, "_wall_seconds", lambda: next(wall))
    monkeypatch.setattr(energy, "_rss_gib", lambda: 20.0)  # 17-32 GiB: 4 DIMMs x 5 W = 20 W on x86
    monkeypatch.setattr(energy, "ram_watts", lambda gib: cpu_power.ram_watts(gib, arm=False))
    meter = energy.EstimateMeter(cpu_watts=10.0, cpu_count=4)
    meter.start()
    reading = meter.stop()
    # CPU: 10 W x 2.5 CPU-seconds = 25 J; RAM: 20 W x 2 wall seconds = 40 J.
    assert reading.details["cpu_joules"] == pytest.approx(25.0)
    assert reading.details["ram_joules"] == pytest.approx(40.0)
    assert reading.joules == pytest.approx(65.0)
    assert reading.is_estimate is True and reading.energy_source == "estimate-cpu-model"
    assert reading.method == "user-cpu-watts"
    assert reading.details["assumed_tdp_w"] == 40.0


def test_estimate_without_ram_is_cpu_only(monkeypatch) -> None:
    cpu = iter([1.0, 3.0])
    monkeypatch.setattr(energy, "_cpu_seconds", lambda: next(cpu))
    meter = energy.EstimateMeter(cpu_watts=2.0, cpu_count=2, include_ram=False)
    meter.start()
    assert meter.stop().joules == pytest.approx(4.0)


def test_rapl_psys_zone_is_never_added_to_packages(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    pkg = _zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000)
    psys = _zone(tmp_path, "intel-rapl:1", "psys", 5_000_000)  # whole platform: contains package-0
    dram = _zone(tmp_path, "intel-rapl:2", "dram", 0)
    meter, _ = energy.select_meter("auto", "cpu", powercap_root=tmp_path)
    assert isinstance(meter, energy.RaplMeter) and meter.describe()["method"] == "rapl-package"
    meter.start()
    (pkg / "energy_uj").write_text("4000000\n")  # package +3 J
    (psys / "energy_uj").write_text("9000000\n")  # platform +4 J (package 3 J + 1 J rest): summing gives 7 J
    (dram / "energy_uj").write_text("500000\n")
    reading = meter.stop()
    assert reading.joules == pytest.approx(3.0)
    assert reading.details["zones"] == ["package-0"] and reading.method == "rapl-package"


def test_rapl_with_only_psys_is_unavailable_not_misread(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    _zone(tmp_path, "intel-rapl:0", "psys", 0)
    meter, skipped = energy.select_meter("auto", "cpu", powercap_root=tmp_path)
    assert isinstance(meter, energy.EstimateMeter)
    assert any("no RAPL package zone" in s and "psys" in s for s in skipped)


@pytest.mark.parametrize(
    ("model", "entry", "tdp"),
    [
        ("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", "Intel Xeon Gold 6248", 150.0),  # noise removed, exact
        ("AMD EPYC 7763 64-Core Processor", "AMD EPYC 7763", 280.0),  # the table's words are a subset
        ("11th Gen Intel(R) Core(TM) i7-1165G7 @ 2.80GHz", "Intel Core i7-1165G7", 28.0),
        ("intel xeon platinum 8380", "Intel Xeon Platinum 8380", 270.0),  # case-insensitive exact
        ("AMD EPYC", None, None),  # what many VMs report: hundreds of entries contain it, so no guess
        ("Intel Xeon Processor (Icelake)", None, None),
    ],
)
def test_tdp_table_match(model: str, entry: str | None, tdp: float | None) -> None:
    assert cpu_power.match_cpu(model) == entry
    if entry is not None:
        assert cpu_power.tdp_table()[entry] == tdp


def test_cpu_power_method_labels() -> None:
    table = cpu_power.cpu_power(model="AMD EPYC 7763 64-Core Processor", logical_cpus=8)
    assert table.method == "tdp-table:AMD EPYC 7763" and table.watts_per_thread == pytest.approx(280.0 / 8)
    fallback = cpu_power.cpu_power(model="AMD EPYC", logical_cpus=2)
    assert (fallback.method, fallback.watts_per_thread, fallback.tdp_w) == ("per-thread-fallback", 4.0, 8.0)
    user = cpu_power.cpu_power(cpu_watts=3.0, model="AMD EPYC 7763", logical_cpus=2)
    assert (user.method, user.watts_per_thread) == ("user-cpu-watts", 3.0)


@pytest.mark.parametrize(
    ("gib", "arm", "watts"),
    [
        (1.0, False, 10.0),  # 1 DIMM x 5 W, but at least two DIMMs' worth on x86
        (1.0, True, 3.0),  # ARM floor
        (24.0, False, 20.0),  # 4 DIMMs x 5 W
        (100.0, False, 38.0),  # 8 DIMMs: 4 x 5 + 4 x 4.5
        (512.0, False, 38.0),  # largest DIMM <= 512 / 8 is 64 GiB: 8 DIMMs
        (4096.0, False, 4 * 5 + 4 * 4.5 + 8 * 4 + 16 * 3.5),  # 32 x 128 GiB: 4 full, 4 at 0.9, 8 at 0.8, 16 at 0.7
    ],
)
def test_ram_power_dimm_rule(gib: float, arm: bool, watts: float) -> None:
    assert cpu_power.ram_watts(gib, arm=arm) == pytest.approx(watts)


def test_energy_choice_validation() -> None:
    meter, _ = energy.select_meter("off")
    assert meter is None
    with pytest.raises(PrunelabError, match="Did you mean 'estimate'"):
        energy.select_meter("estimat")


# ---------------------------------------------------------------- carbon


def test_carbon_arithmetic() -> None:
    assert grams_co2eq(3.6e6, 100.0) == pytest.approx(100.0)  # 1 kWh at 100 g/kWh
    assert grams_co2eq(1800.0, 400.0) == pytest.approx(0.2)  # 0.5 Wh at 400 g/kWh
    assert grid_intensity().country == "WLD" and grid_intensity().g_per_kwh == 475.0
    assert grid_intensity().year == 2019
    user = grid_intensity(g_per_kwh=123.0)
    assert (user.g_per_kwh, user.country, user.source) == (123.0, None, "user")
    with pytest.raises(PrunelabError, match="Did you mean 'FRA'"):
        grid_intensity("FRAA")
    # an explicit intensity wins over the country's table value; the location is kept as what it describes
    fra = grid_intensity("FRA", 10.0)
    assert (fra.g_per_kwh, fra.country, fra.source, fra.year, fra.region) == (10.0, "FRA", "user", None, None)
    with pytest.raises(PrunelabError, match="Did you mean 'FRA'"):
        grid_intensity("FRAA", 10.0)  # a typo in the location is an error even when the number is given
    with pytest.raises(PrunelabError, match="finite"):
        grid_intensity(g_per_kwh=float("inf"))


@pytest.mark.parametrize(
    ("country", "region", "g", "year", "code"),
    [
        # global_energy_mix.json "carbon_intensity" (the 2021 table had 67, 637 and 146)
        ("fra", None, 56.039, 2023, None),
        ("India", None, 713.441, 2023, None),
        ("FIN", None, 79.158, 2023, None),
        # usa_emissions.json: Texas 771.179 lbs/MWh x 0.45359237 = 349.8009 g/kWh
        (None, "US-TX", 771.179 * 0.45359237, 2023, "US-TX"),
        ("USA", "texas", 771.179 * 0.45359237, 2023, "US-TX"),
        ("usa", "ca", 394.769 * 0.45359237, 2023, "US-CA"),
        # canada_energy_mix.json Ontario: gas 8.6 %, petroleum 0.1 %, coal 0 % of a 100.1 total
        (None, "CA-ON", (8.6 * 743.8415916 + 0.1 * 816.6885263) / 100.1, 2023, "CA-ON"),
        ("CAN", "quebec", None, 2023, "CA-QC"),
        (None, "cn-bj", 555.4, 2023, "CN-BJ"),  # china_provincial_emissions.json
        ("CHN", "Beijing Municipality", 555.4, 2023, "CN-BJ"),
        (None, "SE3", 27.0, 2025, "SE3"),  # nordic_emissions.json
    ],
)
def test_grid_intensity_from_codecarbon_data(country, region, g, year, code) -> None:
    it = grid_intensity(country, region=region)
    if g is not None:
        assert it.g_per_kwh == pytest.approx(g)
    assert (it.year, it.region) == (year, code)
    assert it.source and it.source != "user"


def test_region_errors() -> None:
    with pytest.raises(PrunelabError, match="no sub-national grid data for FRA"):
        grid_intensity("FRA", region="TX")
    with pytest.raises(PrunelabError, match="in CAN, not USA"):
        grid_intensity("USA", region="CA-ON")
    with pytest.raises(PrunelabError, match="Did you mean 'US-TX'"):
        grid_intensity(region="US-TXX")
    tx = grid_intensity(region="US-TX", g_per_kwh=3.0)  # explicit wins (source user), region kept
    assert (tx.g_per_kwh, tx.source, tx.year, tx.region, tx.country) == (3.0, "user", None, "US-TX", "USA")
    with pytest.raises(PrunelabError, match="in CAN, not USA"):
        grid_intensity("USA", region="CA-ON", g_per_kwh=3.0)  # a conflicting location still fails
    with pytest.raises(PrunelabError, match="finite"):
        grid_intensity(region="US-TX", g_per_kwh=float("nan"))


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
    assert (c["source"], c["year"]) == ("user", None)
    fra = BenchConfig(country="FRA")
    c = carbon_report(energy_report, bench_intensity(fra), fra)
    assert (c["grid_intensity"], c["year"], c["region"]) == (56.039, 2023, None) and "Ember" in c["source"]


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
