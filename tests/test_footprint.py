"""Energy and carbon of training runs: one metering protocol (`measurement.footprint`) around any block of work.

The hand-computed case fixes the estimate's inputs (CPU-seconds, wall seconds, resident memory), so a wrong formula
(kWh conversion, grams, RAM share) gives another number. Training-aware and LoRA recovery are run for real on tiny
models and must carry the bench's labels: energy method, estimate flag, carbon source, year and region. Beside
them, the inference energy of the models the training made and the break-even, whose formula is checked by hand and
whose reported numbers must follow from the reported joules.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from prunelab._util import work_span
from prunelab.config.bench import FootprintConfig
from prunelab.config.prune import PruneConfig
from prunelab.errors import PrunelabError
from prunelab.measurement import energy
from prunelab.measurement.footprint import break_even_tokens, footprint, metering, payback
from prunelab.pruning.run import prune
from tests.conftest import CORPUS, make_model, make_tokenizer

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
    # beside it: the trained model's and each level's inference energy, with the break-even per level
    report = json.loads((tmp_path / "r.json").read_text())
    dense = report["inference"]["dense"]
    assert dense["j_per_1k_tokens"] > 0 and (dense["carbon"]["region"], dense["carbon"]["year"]) == ("SE3", 2025)
    assert dense["protocol"]["prompt_tokens"] + dense["protocol"]["generated_tokens"] <= 16  # fits --seqlen 16
    levels = [c for c in report["config"]["levels"] if c > 0]
    assert [pb["compression"] for pb in training["payback"]] == levels
    for pb in training["payback"]:
        _check_payback(pb, e["joules"])
        assert pb["dense"] == dense
    measured = [r for r in report["levels"] if "inference" in r]
    assert {r["method"] for r in measured} == {"trajectory"} and len(measured) == len(levels)
    assert "inference energy per 1k generated tokens [estimate-cpu-model" in out and "SE3 27 gCO2eq/kWh" in out
    assert "trajectory variant by compression" in out
    verdicts = [line for line in out.splitlines() if re.search(r"training (repays after|never|unresolved)", line)]
    assert len(verdicts) == len(levels)
    # --no-inference-energy: the training figures stay, the break-even says why it is missing
    assert main([*args, "--no-inference-energy"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["inference"]["dense"] is None and report["training"]["energy"]["joules"] > 0
    paybacks = report["training"]["payback"]
    assert all(pb["status"] == "unknown" and "--no-inference-energy" in pb["missing"] for pb in paybacks)
    assert "training energy [" in out and "training break-even: inference energy not measured" in out
    # a bad region fails in one line before any training
    assert main([*args[:-2], "--region", "SE9"]) == 2
    assert "prunelab: error:" in capsys.readouterr().err


def test_break_even_hand_computed() -> None:
    # 3.6e6 J (1 kWh) of training, 0.5 J saved per token: 7.2 million tokens to repay it
    assert break_even_tokens(3.6e6, 2.0, 1.5) == pytest.approx(7.2e6)
    assert break_even_tokens(100.0, 0.3, 0.1) == pytest.approx(500.0)
    assert break_even_tokens(0.0, 2.0, 1.5) == 0.0  # nothing to repay
    assert break_even_tokens(3.6e6, 2.0, 2.0) is None  # not cheaper: never
    assert break_even_tokens(3.6e6, 1.5, 2.0) is None  # dearer: never
    for bad in ((-1.0, 2.0, 1.5), (1.0, math.nan, 1.0), (1.0, 2.0, -0.1), (math.inf, 2.0, 1.0)):
        with pytest.raises(ValueError, match="finite number >= 0"):
            break_even_tokens(*bad)


def _inference(j_per_1k: float | None, spread: float = 0.01, source: str = "estimate-cpu-model") -> dict:
    protocol = {"prompt_tokens": 16, "generated_tokens": 32, "repeats": 3}
    return {"j_per_1k_tokens": j_per_1k, "energy_source": source, "method": "user-cpu-watts", "is_estimate": True,
            "decode_rel_iqr": spread, "protocol": protocol}  # fmt: skip


TRAINING = {
    "energy": {"joules": 3.6e6, "kwh": 1.0, "energy_source": "estimate-cpu-model", "method": "user-cpu-watts",
               "is_estimate": True},
    "carbon": {"g_co2eq": 27.0, "grid_intensity": 27.0, "country": "SWE", "region": "SE3", "source": "ENTSO-E",
               "year": 2025},
}  # fmt: skip


def test_payback_puts_labelled_training_beside_inference() -> None:
    pb = payback(TRAINING, _inference(2000.0), _inference(1500.0))
    assert pb["status"] == "repays" and pb["break_even_tokens"] == pytest.approx(7.2e6)
    assert pb["saving_j_per_1k_tokens"] == pytest.approx(500.0) and pb["saving_fraction"] == pytest.approx(0.25)
    assert pb["within_noise"] is False and pb["notes"] == [] and pb["missing"] is None
    t = pb["training"]
    assert (t["joules"], t["kwh"], t["g_co2eq"]) == (3.6e6, 1.0, 27.0)
    assert (t["method"], t["is_estimate"]) == ("user-cpu-watts", True)
    assert (t["carbon"]["region"], t["carbon"]["year"], t["carbon"]["source"]) == ("SE3", 2025, "ENTSO-E")
    assert pb["dense"]["j_per_1k_tokens"] == 2000.0 and "dense - pruned" in pb["definition"]
    # a 0.5% saving inside a 2% spread of repeated measurements: unresolved, the point estimate kept
    close = payback(TRAINING, _inference(2000.0, 0.02), _inference(1990.0, 0.02))
    assert close["status"] == "unresolved" and close["within_noise"] is True and close["noise_fraction"] == 0.02
    assert close["break_even_tokens"] == pytest.approx(3.6e6 / 0.01)
    rounds = {**_inference(1500.0), "j_rel_spread": 0.3}  # rounds 30% apart: a 25% saving is not resolved either
    assert payback(TRAINING, _inference(2000.0), rounds)["status"] == "unresolved"
    never = payback(TRAINING, _inference(2000.0), _inference(2100.0))
    assert never["status"] == "never" and never["break_even_tokens"] is None
    assert never["saving_fraction"] == pytest.approx(-0.05)
    mixed = payback(TRAINING, _inference(2000.0, source="rapl"), _inference(1500.0, source="rapl"))
    assert mixed["status"] == "repays" and "different meters" in mixed["notes"][0]


def test_payback_says_what_is_missing() -> None:
    assert payback(TRAINING, None, None, missing="not asked")["missing"] == "not asked"
    no_dense = payback(TRAINING, None, _inference(1500.0))
    assert no_dense["status"] == "unknown" and "dense model's inference energy" in no_dense["missing"]
    off = {"energy": {"joules": None, "energy_source": "off"}, "carbon": {"g_co2eq": None}}
    assert "not metered" in payback(off, _inference(2.0), _inference(1.0))["missing"]
    assert "<= 0" in payback(TRAINING, _inference(-1.0), _inference(1.0))["missing"]
    assert payback(TRAINING, _inference(None), _inference(1.0))["break_even_tokens"] is None


def _check_payback(pb: dict, training_joules: float) -> None:
    """A measured payback: labels present, and its break-even follows from its own joules by the formula."""
    assert pb["training"]["joules"] == pytest.approx(training_joules)
    for record in (pb["dense"], pb["pruned"]):
        assert record["j_per_1k_tokens"] > 0 and record["is_estimate"] is True
        assert record["energy_source"] == "estimate-cpu-model" and record["method"]
        assert record["protocol"]["repeats"] >= 1 and record["carbon"]["year"] is not None
        grams = record["j_per_1k_tokens"] / 3.6e6 * record["carbon"]["grid_intensity"]
        assert record["g_co2eq_per_1k_tokens"] == pytest.approx(grams)
        assert len(record["j_per_1k_tokens_rounds"]) == record["protocol"]["rounds"] == 2
        assert record["j_rel_spread"] >= 0
    dense, pruned = pb["dense"]["j_per_1k_tokens"] / 1000, pb["pruned"]["j_per_1k_tokens"] / 1000
    noise = max(pb["dense"]["j_rel_spread"], pb["pruned"]["j_rel_spread"], pb["dense"]["decode_rel_iqr"],
                pb["pruned"]["decode_rel_iqr"])  # fmt: skip
    assert pb["noise_fraction"] == pytest.approx(noise)
    if dense > pruned:
        assert pb["break_even_tokens"] == pytest.approx(training_joules / (dense - pruned))
    else:
        assert pb["break_even_tokens"] is None
    expected = "unresolved" if abs(dense - pruned) / dense <= noise else ("repays" if dense > pruned else "never")
    assert pb["status"] == expected


def test_recovery_reports_training_beside_inference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`prune --recover` and `prunelab recover`: the recovery's energy, and beside it the dense and recovered
    models' inference energy and the break-even, in the text output and in prunelab.json."""
    from prunelab.cli import main

    dense = tmp_path / "dense"
    make_model("llama").save_pretrained(dense)
    make_tokenizer().save_pretrained(dense)
    text = tmp_path / "c.txt"
    text.write_text(CORPUS)
    energy = ["--energy", "estimate", "--country", "FRA", "--inference-gen-len", "8", "--inference-repeats", "2"]
    args = ["-q", "prune", "--model", str(dense), "--method", "structured", "--sparsity", "0.5", "--target", "mlp",
            "--calib", str(text), "--calib-samples", "2", "--calib-seqlen", "16", "--ppl", str(text), "--seqlen", "16",
            "--max-windows", "2", "--recover", "distill",
            "--recover-tokens", "32", "--recover-data", str(text), "--recover-seqlen", "16", "--recover-batch-size",
            "2", "--output", str(tmp_path / "p"), *energy]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    rec = json.loads((tmp_path / "p" / "prunelab.json").read_text())["recovery"]
    assert rec["energy"]["joules"] > 0 and rec["carbon"]["country"] == "FRA"
    _check_payback(rec["payback"], rec["energy"]["joules"])
    assert rec["payback"]["dense"]["protocol"]["generated_tokens"] == 8
    assert "distill recovery energy [estimate-cpu-model" in out and "FRA 56.039 gCO2eq/kWh" in out
    assert "inference energy per 1k generated tokens [estimate-cpu-model" in out and "recovered " in out
    assert re.search(r"distill recovery energy \([0-9.e+-]+ J\) (repays after|never|unresolved)", out)

    recover = ["-q", "recover", str(tmp_path / "p"), "--teacher", str(dense), "--tokens", "32", "--seqlen", "16",
               "--batch-size", "2", "--data", str(text), "--out", str(tmp_path / "r"), *energy]  # fmt: skip
    assert main(recover) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    rec = json.loads((tmp_path / "r" / "prunelab.json").read_text())["recovery"]
    assert rec["energy"]["is_estimate"] is True  # `prunelab recover` meters its recovery too
    _check_payback(rec["payback"], rec["energy"]["joules"])
    assert "distill recovery energy [" in out and "inference energy per 1k generated tokens" in out

    assert main([*recover, "--overwrite", "--no-inference-energy"]) == 0
    rec = json.loads((tmp_path / "r" / "prunelab.json").read_text())["recovery"]
    assert rec["payback"]["status"] == "unknown" and "prunelab bench" in rec["payback"]["missing"]
    assert "unknown: inference energy not measured (--no-inference-energy)" in capsys.readouterr().out


def test_recover_steps_reports_training_beside_inference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """structured's own --recover-steps LoRA run gets the same payback as --recover (the dense model measured
    before pruning)."""
    pytest.importorskip("peft")
    from prunelab.cli import main

    dense = tmp_path / "dense"
    make_model("llama").save_pretrained(dense)
    make_tokenizer().save_pretrained(dense)
    text = tmp_path / "c.txt"
    text.write_text(CORPUS)
    args = ["-q", "prune", "--model", str(dense), "--method", "structured", "--sparsity", "0.5", "--target", "mlp",
            "--importance", "magnitude", "--recover-steps", "2", "--calib", str(text), "--calib-samples", "2",
            "--calib-seqlen", "16", "--ppl", str(text), "--seqlen", "16", "--max-windows", "2", "--energy", "estimate",
            "--inference-gen-len", "8", "--inference-repeats", "2", "--json", str(tmp_path / "r.json")]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    rec = json.loads((tmp_path / "r.json").read_text())["recovery"]
    _check_payback(rec["payback"], rec["energy"]["joules"])
    assert "lora recovery energy [estimate-cpu-model" in out and "inference energy per 1k generated tokens" in out
