"""Energy and carbon of training runs: one metering protocol (`measurement.footprint`) around any block of work.

The hand-computed case fixes the estimate's inputs (CPU-seconds, wall seconds, resident memory), so a wrong formula
(kWh conversion, grams, RAM share) gives another number. Training-aware and LoRA recovery are run for real on tiny
models and must carry the bench's labels: energy method, estimate flag, carbon source, year and region.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from prunelab._util import work_span
from prunelab.config.bench import FootprintConfig
from prunelab.config.prune import PruneConfig
from prunelab.errors import PrunelabError
from prunelab.measurement import energy
from prunelab.measurement.footprint import footprint, metering
from prunelab.pruning.run import prune
from tests.conftest import make_model

TX = 771.179 * 0.45359237  # eGRID2023 Texas, g/kWh


def _fixed_clocks(monkeypatch: pytest.MonkeyPatch, cpu: list[float], wall: list[float], rss_gib: float) -> None:
    cpu_it, wall_it = iter(cpu), iter(wall)
    monkeypatch.setattr(energy, "_cpu_seconds", lambda: next(cpu_it))
    monkeypatch.setattr(energy, "_wall_seconds", lambda: next(wall_it))
    monkeypatch.setattr(energy, "_rss_gib", lambda: rss_gib)
    monkeypatch.setattr(energy, "ram_watts", lambda gib: 10.0 if gib == rss_gib else math.nan)


def test_footprint_hand_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    # 10 CPU-seconds at 2 W per logical CPU = 20 J; RAM 10 W x 20 s wall = 200 J; 220 J in all
    _fixed_clocks(monkeypatch, cpu=[5.0, 15.0], wall=[100.0, 120.0], rss_gib=1.0)
    cfg = FootprintConfig(energy="estimate", cpu_watts=2.0, region="US-TX")
    with footprint("training", cfg) as record:
        pass
    e, c = record["energy"], record["carbon"]
    assert record["label"] == "training"
    assert e["joules"] == pytest.approx(220.0)
    assert e["kwh"] == pytest.approx(220.0 / 3.6e6)
    assert (e["method"], e["is_estimate"], e["energy_source"]) == ("user-cpu-watts", True, "estimate-cpu-model")
    assert c["g_co2eq"] == pytest.approx(220.0 / 3.6e6 * TX)
    assert (c["region"], c["country"], c["year"]) == ("US-TX", "USA", 2023) and "eGRID" in c["source"]


def test_user_intensity_wins_over_the_region(monkeypatch: pytest.MonkeyPatch) -> None:
    _fixed_clocks(monkeypatch, cpu=[0.0, 10.0], wall=[0.0, 20.0], rss_gib=1.0)
    cfg = FootprintConfig(energy="estimate", cpu_watts=2.0, region="US-TX", grid_intensity=100.0)
    with footprint("training", cfg) as record:
        pass
    c = record["carbon"]
    assert c["g_co2eq"] == pytest.approx(220.0 / 3.6e6 * 100.0)  # not Texas's 349.8 g/kWh
    assert (c["source"], c["year"], c["region"], c["country"]) == ("user", None, "US-TX", "USA")


def test_energy_off_keeps_the_labels() -> None:
    with footprint("training", FootprintConfig(energy="off", country="FRA")) as record:
        pass
    assert record["energy"]["joules"] is None and record["carbon"]["g_co2eq"] is None
    assert record["carbon"]["country"] == "FRA" and record["carbon"]["year"] == 2023


def test_work_span_is_metered_only_inside_metering() -> None:
    with work_span("loop") as unmetered:
        pass
    assert unmetered == {}
    with metering(FootprintConfig(energy="estimate")), work_span("loop") as metered:
        sum(range(10_000))
    assert metered["label"] == "loop" and metered["energy"]["joules"] > 0
    assert metered["energy"]["method"] in ("per-thread-fallback",) or metered["energy"]["method"].startswith("tdp")
    with work_span("after") as after:  # the meter is uninstalled when the block ends
        pass
    assert after == {}


def test_metering_checks_settings_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(PrunelabError, match="Did you mean 'US-TX'"):
        metering(FootprintConfig(region="US-TXX"))
    with pytest.raises(PrunelabError, match="in CAN, not USA"):
        metering(FootprintConfig(country="USA", region="CA-ON", grid_intensity=10.0))  # the location is still checked


def test_lora_recovery_reports_its_footprint(calib: torch.Tensor) -> None:
    pytest.importorskip("peft")
    options = {"target": "mlp", "importance": "magnitude", "recover_steps": 2, "recover_lr": 1e-2}
    cfg = PruneConfig(method="structured", sparsity=0.25, options=options)
    with metering(FootprintConfig(energy="estimate", country="FRA")):
        result = prune(make_model("llama"), cfg, calib=calib)
    rec = result.extra["recovery"]
    assert rec["energy"]["joules"] > 0 and rec["energy"]["is_estimate"] is True
    assert rec["carbon"]["g_co2eq"] == pytest.approx(rec["energy"]["joules"] / 3.6e6 * 56.039)
    assert rec["carbon"]["year"] == 2023
    plain = prune(make_model("llama"), cfg, calib=calib)  # no meter installed: no footprint, nothing invented
    assert "energy" not in plain.extra["recovery"]


def test_train_aware_reports_the_training_footprint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from prunelab.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"Line {i}: to be, or not to be, that is the question.\n" for i in range(300)))
    args = ["-q", "train-aware", "--preset", "tiny", "--corpus", str(corpus), "--epochs", "1", "--steps-per-epoch",
            "2", "--batch-size", "4", "--seqlen", "16", "--eval-windows", "2", "--energy", "estimate",
            "--region", "SE3", "--json", str(tmp_path / "r.json")]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    training = json.loads((tmp_path / "r.json").read_text())["training"]
    e, c = training["energy"], training["carbon"]
    assert e["joules"] > 0 and e["kwh"] == pytest.approx(e["joules"] / 3.6e6) and e["is_estimate"] is True
    assert c["g_co2eq"] == pytest.approx(e["joules"] / 3.6e6 * 27.0)
    assert (c["region"], c["year"]) == ("SE3", 2025)
    assert "training energy [estimate-cpu-model" in out and "ESTIMATE" in out and "SE3 27 gCO2eq/kWh" in out
    # a bad region fails in one line before any training
    assert main([*args[:-2], "--region", "SE9"]) == 2
    assert "prunelab: error:" in capsys.readouterr().err
