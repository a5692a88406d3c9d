"""`prunelab bench` end to end on a tiny random model: every JSON field present and sane; errors are one line."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from prunelab import PruneConfig, load_model, prune
from prunelab.cli import main
from prunelab.measurement.carbon import grams_co2eq

FAST = ["--prompt-len", "8", "16", "--gen-len", "4", "--batch", "1", "2", "--repeats", "2", "--warmup", "0"]
ROOT = Path(__file__).resolve().parents[1]


def _stats_ok(st: dict, n: int) -> None:
    assert st["n"] == n and len(st["values"]) == n
    assert st["median"] > 0 and st["iqr"] >= 0 and st["min"] <= st["q1"] <= st["median"] <= st["q3"] <= st["max"]


def test_bench_tiny_pruned_model_every_field(tiny_folder: Path, tmp_path: Path, capsys, no_network) -> None:
    lm = load_model(str(tiny_folder))
    prune(lm.model, PruneConfig(method="magnitude", sparsity=0.5))
    pruned = tmp_path / "pruned"
    lm.model.save_pretrained(pruned)
    lm.tokenizer.save_pretrained(pruned)
    params = sum(p.numel() for p in lm.model.parameters())

    out = tmp_path / "bench.json"
    args = ["-q", "bench", "--model", str(pruned), *FAST, "--threads", "1", "--energy", "estimate"]
    code = main([*args, "--country", "FRA", "--sparse-kernels", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    r = json.loads(out.read_text())
    assert {"latency", "memory", "size", "energy", "carbon", "hardware"} <= set(r)

    lat = r["latency"]
    assert set(lat["prefill_ms"]) == {"8", "16"} and set(lat["throughput_tokens_per_s"]) == {"1", "2"}
    for st in [*lat["prefill_ms"].values(), lat["decode_tokens_per_s"], *lat["throughput_tokens_per_s"].values()]:
        _stats_ok(st, 2)
    assert lat["protocol"]["threads"] == 1 and lat["protocol"]["repeats"] == 2
    for st in [*lat["prefill_cpu_ms"].values(), *lat["generate_cpu_ms_per_token"].values()]:
        _stats_ok(st, 2)

    mem = r["memory"]
    assert set(mem["phases"]) == {"load", "inference"}
    assert mem["peak_rss_mb"] == max(p["peak_rss_mb"] for p in mem["phases"].values()) > 50

    size = r["size"]
    assert size["params"] == params and size["nonzero_params"] < params
    assert 0.45 < size["prunable_sparsity"] < 0.55
    assert 0 < size["compact_bytes"] < size["dense_bytes"] and size["round_trip_bit_exact"] is True
    assert size["float16"]["dense_bytes"] < size["dense_bytes"]

    e = r["energy"]
    assert e["energy_source"] == "estimate-cpu-model" and e["is_estimate"] is True
    assert e["joules"] > 0 and e["joules_per_request_token"] == pytest.approx(e["joules"] / 4)
    assert e["joules_per_token"] < e["joules_per_request_token"]  # the prompt's prefill energy is taken out
    assert e["joules_per_1k_prefill_tokens"] > 0 and 0 <= e["overhead_fraction"] < 0.05

    c = r["carbon"]
    assert e["method"] in ("per-thread-fallback", "user-cpu-watts") or e["method"].startswith("tdp-table:")
    assert (c["country"], c["grid_intensity"], c["year"]) == ("FRA", 56.039, 2023)  # CodeCarbon's global mix
    assert c["g_co2eq_per_1k_tokens"] == pytest.approx(grams_co2eq(e["joules_per_token"] * 1000, 56.039))

    hw = r["hardware"]
    assert hw["torch"] == torch.__version__ and hw["dtype"] == "float32" and hw["torch_threads"] == 1
    assert hw["cpu"] and hw["device"] == "cpu" and hw["transformers"]

    assert r["sparse_kernels"]["used"] is False and "compute capability" in r["sparse_kernels"]["reason"]
    assert any("dense kernels" in n for n in r["notes"])
    assert "decode:" in printed and "ESTIMATE" in printed and "note:" in printed


def test_bench_energy_off_and_no_size(tiny_folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "off.json"
    args = ["-q", "bench", "--model", str(tiny_folder), *FAST, "--threads", "1", "--energy", "off", "--no-size"]
    # --grid-intensity with --region: the explicit number wins (source "user"), the region is kept as the location
    code = main([*args, "--grid-intensity", "100", "--region", "US-TX", "--json", str(out)])
    assert code == 0
    r = json.loads(out.read_text())
    assert r["energy"]["energy_source"] == "off" and r["energy"]["joules"] is None
    assert r["carbon"]["g_co2eq_per_1k_tokens"] is None and r["carbon"]["grid_intensity"] == 100.0
    assert (r["carbon"]["source"], r["carbon"]["year"], r["carbon"]["region"]) == ("user", None, "US-TX")
    assert "dense_bytes" not in r["size"] and r["size"]["nonzero_params"] == r["size"]["params"]
    assert r["notes"] == []  # a dense model gets no sparsity note
    assert "energy [" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--country", "XYZ"], "unknown country code"),
        (["--energy", "estimat"], "energy"),
        (["--energy", "rapl"], "RAPL"),
        (["--prompt-len", "300"], "exceed the context"),
        (["--gen-len", "1"], "gen_len"),
        (["--prompt-len", "512"], "prompt 512 + 64 generated tokens exceed the context"),  # given: not shortened
        (["--prompt-len", "128", "--gen-len", "200"], "prompt 128 + 200 generated tokens exceed the context"),
        (["--gen-len", "300"], "prompt 512 + 300 generated tokens exceed the context"),  # no room left for a prompt
    ],
)
def test_bench_bad_input_is_one_line(tiny_folder: Path, capsys, monkeypatch, tmp_path, args, message) -> None:
    from prunelab.measurement import energy

    monkeypatch.setattr(energy, "POWERCAP_ROOT", tmp_path / "no-powercap")
    code = main(["bench", "--model", str(tiny_folder), "--repeats", "1", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_gpu_script_skips_cleanly_without_a_gpu(capsys, monkeypatch) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present; the script would run for real")
    spec = importlib.util.spec_from_file_location("gpu_semi_structured", ROOT / "bench" / "gpu_semi_structured.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(sys, "argv", ["gpu_semi_structured.py"])
    assert script.main() == 0
    out = capsys.readouterr().out
    assert out.startswith("gpu_semi_structured: skipped:") and "compute capability >= 8.0" in out


def test_python_api_bench_on_in_memory_model(model_factory) -> None:
    from prunelab import bench
    from prunelab.measurement import BenchConfig

    before = torch.get_num_threads()
    cfg = BenchConfig(prompt_lens=[8], gen_len=3, batches=[1], repeats=1, warmup=0, threads=1, energy="estimate")
    r = bench(model_factory("qwen2"), cfg)
    assert r["latency"]["prefill_ms"]["8"]["n"] == 1 and r["hardware"]["torch_threads"] == 1
    assert torch.get_num_threads() == before  # the thread count is restored for the caller
    assert r["memory"]["phases"].keys() == {"inference"} and r["size"]["round_trip_bit_exact"] is True


def test_default_lengths_shorten_to_a_256_token_context(model_factory) -> None:
    from prunelab.api.bench import fit_bench_lengths
    from prunelab.errors import PrunelabError
    from prunelab.measurement import BenchConfig

    model = model_factory("llama")  # max_position_embeddings 256; the defaults are prompt 128 512 + 64 generated
    fitted, note = fit_bench_lengths(model, BenchConfig())
    assert (fitted.prompt_lens, fitted.gen_len) == ([128, 192], 64)  # 512 -> 256 - 64; 128 already fits
    assert note == ("default lengths shortened to the model's context (256): prompt 128 512 + 64 generated -> "
                    "prompt 128 192 + 64 generated")  # fmt: skip
    fitted, _ = fit_bench_lengths(model, BenchConfig(gen_len=100))  # a given gen_len stays, the prompts make room
    assert (fitted.prompt_lens, fitted.gen_len) == ([128, 156], 100)
    fitted, _ = fit_bench_lengths(model, BenchConfig(prompt_lens=[250]))  # a given prompt stays, gen_len shortens
    assert (fitted.prompt_lens, fitted.gen_len) == ([250], 6)
    small = BenchConfig(prompt_lens=[8], gen_len=4)
    assert fit_bench_lengths(model, small) == (small, None)  # fits: nothing changes, no note
    with pytest.raises(PrunelabError, match="prompt 512 \\+ 64 generated tokens exceed the context"):
        fit_bench_lengths(model, BenchConfig(prompt_lens=[512], gen_len=64))  # both given: refused


def test_cli_bench_defaults_shortened_and_recorded(tiny_folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "b.json"
    args = ["-q", "bench", "--model", str(tiny_folder), "--batch", "1", "--repeats", "1", "--warmup", "0",
            "--threads", "1", "--energy", "off", "--no-size", "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    r = json.loads(out.read_text())
    assert sorted(r["latency"]["prefill_ms"], key=int) == ["128", "192"]
    assert r["config"]["prompt_lens"] == [128, 192] and r["config"]["gen_len"] == 64
    protocol = r["latency"]["protocol"]
    assert protocol["decode_prompt_len"] == 128 and protocol["gen_len"] == 64
    assert any("shortened to the model's context (256)" in n for n in r["notes"])
    assert "note: default lengths shortened" in capsys.readouterr().out
