"""The benchmark of one in-memory model: latency, throughput, memory, size, energy and carbon in one report.

Order matters: (if asked and possible) 2:4 layers are swapped for sparse kernels, sizes being measured on the plain
weights just before; then the timed runs, inside one memory phase, each timed block metered for energy; then sizes
on disk, so the checkpoint writing does not inflate the inference phase's peak memory.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import psutil
import torch
from torch import nn

from prunelab._util import check_memory, environment
from prunelab.config.bench import BenchConfig, InferenceEnergyConfig
from prunelab.measurement.carbon import GridIntensity, grams_co2eq, grid_intensity
from prunelab.measurement.energy import EnergyReading, select_meter
from prunelab.measurement.footprint import intensity_fields
from prunelab.measurement.latency import decode, prefill
from prunelab.measurement.memory import PeakMemory
from prunelab.measurement.size import measure_sizes, unique_tensors
from prunelab.measurement.sparse_kernels import apply_semi_structured, semi_structured_unavailable
from prunelab.measurement.timing import set_threads

log = logging.getLogger(__name__)


__all__ = [
    "BenchConfig",
    "bench_intensity",
    "carbon_report",
    "energy_report",
    "hardware",
    "inference_energy",
    "latency_report",
    "run_bench",
]


def bench_intensity(cfg: BenchConfig) -> GridIntensity:
    """The grid carbon intensity the config asks for (a bad country code fails here, before any timing)."""
    return grid_intensity(cfg.country, cfg.grid_intensity, cfg.region)


def hardware(model: nn.Module, device: torch.device, threads: int) -> dict[str, Any]:
    """Machine, versions, dtype and threads recorded with every result."""
    hw = environment()
    hw.update(
        device=str(device),
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        torch_threads=threads,
        memory_total_mb=psutil.virtual_memory().total / 2**20,
    )
    if device.type == "cuda":
        hw["gpu"] = torch.cuda.get_device_name(device)
        hw["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    return hw


def _joules(readings: list[EnergyReading | None]) -> float:
    return sum(r.joules for r in readings if r is not None)


def energy_report(
    meter_info: dict[str, Any] | None,
    skipped: list[str],
    prefills: list[tuple[int, Any]],
    dec: Any,
    throughputs: dict[int, Any],
    cfg: BenchConfig,
) -> dict[str, Any]:
    """The energy section of a bench report (any runtime): per request, per generated token, per 1k prefill
    tokens, from the readings of the timed prefill and decode blocks. `throughputs` maps batch -> Measured."""
    if meter_info is None:
        return {"energy_source": "off", "is_estimate": None, "joules": None, "joules_per_token": None}
    prefill_tokens = sum(length * cfg.repeats for length, _ in prefills)
    prefill_j = _joules([m.energy for _, m in prefills])
    run_j = dec.energy.joules / cfg.repeats
    first = prefills[0][1]  # same prompt length as the decode runs
    prompt_j = first.energy.joules / cfg.repeats if first.energy else 0.0
    readings = [m.energy for _, m in prefills] + [dec.energy] + [t.energy for b, t in throughputs.items() if b != 1]
    seconds = sum(r.seconds for r in readings if r is not None)
    overhead = sum(r.overhead_s for r in readings if r is not None)
    return {
        **meter_info,
        "joules": run_j,
        "joules_per_token": (run_j - prompt_j) / cfg.gen_len,
        "joules_per_request_token": run_j / cfg.gen_len,
        "joules_per_1k_prefill_tokens": prefill_j / prefill_tokens * 1000,
        "joules_per_token_by_batch": {
            str(b): (t.energy.joules / (cfg.repeats * b * cfg.gen_len) if t.energy else None)
            for b, t in throughputs.items()
        },
        "definitions": {
            "joules": f"one request: batch 1, {cfg.prompt_lens[0]} prompt + {cfg.gen_len} generated tokens",
            "joules_per_token": "per generated token: (joules - measured prefill energy of the prompt) / gen_len",
            "joules_per_request_token": "joules / gen_len (the prompt's prefill shared out over generated tokens)",
        },
        "joules_total": _joules(readings),
        "metered_seconds": seconds,
        "overhead_s": overhead,
        "overhead_fraction": overhead / seconds if seconds else None,
        "details": dec.energy.details,
        "skipped_sources": skipped,
    }


def carbon_report(energy: dict[str, Any], intensity: GridIntensity, cfg: BenchConfig) -> dict[str, Any]:
    """grams CO2eq of the energy section at the config's grid intensity (any runtime)."""
    report: dict[str, Any] = {
        **intensity_fields(intensity),
        "request_shape": {"prompt_tokens": cfg.prompt_lens[0], "generated_tokens": cfg.gen_len, "batch": 1},
    }
    if energy.get("joules") is None:
        return {**report, "g_co2eq_per_1k_tokens": None, "g_co2eq_per_1k_prefill_tokens": None}
    g = intensity.g_per_kwh
    return {
        **report,
        "g_co2eq_per_1k_tokens": grams_co2eq(energy["joules_per_token"] * 1000, g),
        "g_co2eq_per_1k_prefill_tokens": grams_co2eq(energy["joules_per_1k_prefill_tokens"], g),
        "g_co2eq_per_million_requests": grams_co2eq(energy["joules"] * 1e6, g),
        "is_estimate": energy["is_estimate"],
    }


def latency_report(
    prefills: list[tuple[int, Any]], dec: Any, throughputs: dict[int, Any], protocol: dict[str, Any]
) -> dict[str, Any]:
    """The latency section of a bench report, one shape for every runtime: prefill ms per prompt length, decode
    tokens/s at batch 1, first-token ms, CPU time, throughput per batch, and the protocol that produced them."""
    return {
        "prefill_ms": {str(length): m.stats.to_dict() for length, m in prefills},
        "decode_tokens_per_s": dec.stats.to_dict(),
        "first_token_ms_in_generate": dec.extra["first_token_ms"],
        "prefill_cpu_ms": {str(length): m.extra["cpu_ms"].to_dict() for length, m in prefills},
        "generate_cpu_ms_per_token": {
            str(b): t.extra["cpu_ms_per_token"].to_dict() for b, t in sorted(throughputs.items())
        },
        "throughput_tokens_per_s": {str(b): t.stats.to_dict() for b, t in sorted(throughputs.items())},
        "protocol": protocol,
    }


def inference_bytes(model: nn.Module, cfg: BenchConfig) -> int:
    """About the least memory the largest run needs, in the model's dtype: the KV cache of the biggest batch, the
    hidden states and MLP activations of its prefill (one layer's at a time), and the logits of the batch-1 prefill
    measurement (every prompt position) and of each generated step (the last position of each sequence)."""
    c = model.config
    layers = getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", 0) or 0
    hidden = getattr(c, "hidden_size", None) or getattr(c, "n_embd", 0) or 0
    heads = getattr(c, "num_attention_heads", None) or getattr(c, "n_head", 1) or 1
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or hidden // heads
    inter = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * hidden
    vocab = getattr(c, "vocab_size", 0) or 0
    width = next(model.parameters()).element_size()
    batch, prompt = max(cfg.batches), cfg.prompt_lens[0]
    kv = 2 * layers * batch * (prompt + cfg.gen_len) * kv_heads * head_dim
    activations = batch * prompt * (4 * hidden + 2 * inter)
    logits = max(cfg.prompt_lens) * vocab + batch * vocab
    return (kv + activations + logits) * width


def _prunable_sparsity(layers: dict[str, nn.Module]) -> float:
    weights = [m.weight for m in layers.values() if isinstance(getattr(m, "weight", None), torch.Tensor)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0


def _measure_sizes(model: nn.Module, size: dict[str, Any]) -> None:
    size.update(measure_sizes(model))
    if next(model.parameters()).dtype == torch.float32:
        size["float16"] = measure_sizes(model, torch.float16)


def run_bench(
    model: nn.Module,
    cfg: BenchConfig,
    layers: dict[str, nn.Module] | None = None,
    phases: list[PeakMemory] | None = None,
) -> dict[str, Any]:
    """Measure `model` as `cfg` says. `layers` are its prunable layers (for sparsity and 2:4 kernels); `phases`
    are memory phases measured by the caller (load, prune), reported alongside inference. torch's thread count is
    restored afterwards."""
    previous = torch.get_num_threads()
    try:
        return _run_bench(model, cfg, set_threads(cfg.threads), layers or {}, phases or [])
    finally:
        torch.set_num_threads(previous)


def _run_bench(
    model: nn.Module, cfg: BenchConfig, threads: int, layers: dict[str, nn.Module], phases: list[PeakMemory]
) -> dict[str, Any]:
    device = next(model.parameters()).device
    check_memory(inference_bytes(model, cfg), f"bench --batch {max(cfg.batches)}", str(device))
    intensity = bench_intensity(cfg)
    meter, skipped = select_meter(cfg.energy, str(device), cpu_watts=cfg.cpu_watts)
    sparsity = _prunable_sparsity(layers)
    notes: list[str] = []

    tensors, _ = unique_tensors(model)
    size: dict[str, Any] = {
        "params": sum(t.numel() for t in tensors.values()),
        "nonzero_params": sum(int(torch.count_nonzero(t)) for t in tensors.values()),
        "weight_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
        "prunable_sparsity": sparsity,
    }
    kernels: dict[str, Any] = {"requested": cfg.sparse_kernels, "used": False}
    if cfg.sparse_kernels:
        reason = semi_structured_unavailable(device)
        if not reason and cfg.size:
            _measure_sizes(model, size)  # before the swap, which changes how weights are stored
        if reason:
            kernels["reason"] = reason
            notes.append(f"--sparse-kernels skipped: {reason}")
            log.warning("sparse kernels skipped: %s", reason)
        else:
            kernels.update(apply_semi_structured(layers))
            kernels["used"] = kernels["converted"] > 0
    if sparsity > 0.01 and not kernels["used"]:
        notes.append(
            f"{sparsity:.0%} of the prunable weights are zero, but they run through dense kernels, which multiply "
            "zeros like any other value: expect the dense model's latency and throughput (bench/RESULTS.md "
            "measures it). Here pruning buys size on disk (size.compact_bytes), not speed."
        )

    model.eval()
    with PeakMemory("inference", device) as mem:
        prefills = [
            (length, prefill(model, length, cfg.warmup, cfg.repeats, meter, cfg.seed)) for length in cfg.prompt_lens
        ]
        throughputs: dict[int, Any] = {}
        dec, throughputs[1] = decode(
            model, cfg.prompt_lens[0], cfg.gen_len, cfg.warmup, cfg.repeats, 1, meter, cfg.seed
        )
        for b in cfg.batches:
            if b != 1:
                _, throughputs[b] = decode(
                    model, cfg.prompt_lens[0], cfg.gen_len, cfg.warmup, cfg.repeats, b, meter, cfg.seed
                )
    if cfg.size and "dense_bytes" not in size:
        # After the timed runs: writing checkpoints leaves freed buffers in the allocator, which would inflate the
        # inference phase's resident memory.
        _measure_sizes(model, size)
    all_phases = [*phases, mem]
    memory = {
        "peak_rss_mb": max(p.peak_rss_mb for p in all_phases),
        "phases": {p.phase: p.to_dict() for p in all_phases},
    }
    if device.type == "cuda":
        memory["peak_cuda_mb"] = max(p.peak_cuda_mb or 0.0 for p in all_phases)

    latency = latency_report(
        prefills,
        dec,
        throughputs,
        protocol={
            "warmup": cfg.warmup,
            "repeats": cfg.repeats,
            "threads": threads,
            "gen_len": cfg.gen_len,
            "decode_prompt_len": cfg.prompt_lens[0],
            "decoding": "greedy, EOS ignored (min_new_tokens = max_new_tokens), KV cache on",
            "prompts": f"random token ids, seed {cfg.seed}",
        },
    )
    energy = energy_report(meter.describe() if meter else None, skipped, prefills, dec, throughputs, cfg)
    return {
        "latency": latency,
        "memory": memory,
        "size": size,
        "energy": energy,
        "carbon": carbon_report(energy, intensity, cfg),
        "sparse_kernels": kernels,
        "hardware": hardware(model, device, threads),
        "notes": notes,
        "config": cfg.model_dump(),
    }


def _context(model: nn.Module) -> int | None:
    c = model.config
    n = getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None)
    return int(n) if n else None


def inference_energy(
    model: nn.Module,
    cfg: InferenceEnergyConfig | None = None,
    footprint: Any = None,
    layers: dict[str, nn.Module] | None = None,
) -> dict[str, Any]:
    """Energy per 1,000 generated tokens of `model` from a short `run_bench` (batch 1; `cfg` sets its length and
    repeats, `footprint` the energy source and grid, as for the training it is compared with). The record that
    `measurement.footprint.payback` reads: joules and grams per 1k generated tokens of a request (the bench's
    `joules_per_request_token`: the whole request's joules, its short prompt's prefill included, over the generated
    tokens), the meter's labels, decode speed and its relative IQR, the protocol, the bench's notes.

    Why per request token and not the bench's `joules_per_token` (the prompt's separately measured prefill taken
    off): on a decode this short the difference of two noisy readings often comes out negative; the request's
    joules are one reading, always positive, and dense and pruned models run the same request shape.

    `inference_rounds` separate benches: `j_per_1k_tokens` is their median, `j_rel_spread` (max - min) / median.
    Adjacent runs inside one bench agree more closely than separate benches do (a busy machine, CPU frequency), so
    the spread between rounds is the honest noise floor of a comparison between two models."""
    cfg = cfg or InferenceEnergyConfig()
    bench_cfg = cfg.bench_config(footprint, _context(model))
    reports = [run_bench(model, bench_cfg, layers) for _ in range(cfg.inference_rounds)]
    report = reports[0]
    energy, lat = report["energy"], report["latency"]
    rounds = [r["energy"].get("joules_per_request_token") for r in reports]
    measured = [float(j) for j in rounds if j is not None]
    per_token = float(np.median(measured)) if measured and len(measured) == len(rounds) else None
    carbon = report["carbon"]
    decode = [r["latency"]["decode_tokens_per_s"] for r in reports]
    median = float(np.median([d["median"] for d in decode]))
    return {
        "j_per_1k_tokens": None if per_token is None else per_token * 1000,
        "j_per_1k_tokens_rounds": [None if j is None else j * 1000 for j in rounds],
        "j_rel_spread": (max(measured) - min(measured)) / per_token if per_token else None,
        "g_co2eq_per_1k_tokens": None if per_token is None else grams_co2eq(per_token * 1000, carbon["grid_intensity"]),
        "definition": "joules per generated token of a batch-1 request (prompt prefill + decode) / generated tokens",
        "energy_source": energy["energy_source"],
        "method": energy.get("method", energy["energy_source"]),
        "is_estimate": energy["is_estimate"],
        "scope": energy.get("scope"),
        "decode_tokens_per_s": median,
        "decode_rel_iqr": max(d["iqr"] / d["median"] for d in decode) if all(d["median"] for d in decode) else None,
        "carbon": {k: carbon.get(k) for k in ("grid_intensity", "country", "region", "source", "year")},
        "protocol": {
            "batch": 1,
            "prompt_tokens": bench_cfg.prompt_lens[0],
            "generated_tokens": bench_cfg.gen_len,
            "warmup": bench_cfg.warmup,
            "repeats": bench_cfg.repeats,
            "rounds": cfg.inference_rounds,
            "threads": lat["protocol"]["threads"],
            "device": report["hardware"]["device"],
        },
        "notes": report["notes"],
    }
