"""`prunelab bench`: latency, throughput, memory, size, energy and carbon of a model (see prunelab.measurement)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from torch import nn

from prunelab._util import write_json_atomic
from prunelab.api.runtime import check_runtime, load_for_run
from prunelab.config.bench import BenchConfig
from prunelab.config.models import ModelConfig
from prunelab.config.prune import PruneConfig
from prunelab.config.runtime import RuntimeConfig
from prunelab.errors import PrunelabError
from prunelab.measurement.bench import bench_intensity, run_bench
from prunelab.measurement.energy import select_meter
from prunelab.measurement.memory import PeakMemory
from prunelab.models import check_context, prunable_layers
from prunelab.pruning import make_pruner
from prunelab.pruning.run import prune


def check_bench_lengths(model: nn.Module, cfg: BenchConfig) -> None:
    longest = max(cfg.prompt_lens) + cfg.gen_len
    what = f"prompt {max(cfg.prompt_lens)} + {cfg.gen_len} generated tokens exceed the context: {longest}"
    check_context(model, longest, what)


def bench(model: nn.Module, cfg: BenchConfig | None = None) -> dict[str, Any]:
    """Measure an in-memory model: latency, throughput, memory, size, energy, carbon (see prunelab.measurement)."""
    cfg = cfg or BenchConfig()
    check_bench_lengths(model, cfg)
    return run_bench(model, cfg, prunable_layers(model))


def bench_job(
    cfg: BenchConfig,
    source: ModelConfig | None = None,
    prune_cfg: PruneConfig | None = None,
    json_path: str | None = None,
    runtime: RuntimeConfig | None = None,
) -> dict[str, Any]:
    """Load (and optionally prune) a model, then benchmark it; load and prune peak memory are measured too.

    With `runtime`, the model runs with activation sparsity (decode steps; prefill dense) and/or, for a compact
    folder, CSR kernels; the report records the level and the kernels chosen per layer shape. With
    `source.runtime == "llamacpp"` the GGUF file is measured in llama.cpp instead."""
    source, runtime = source or ModelConfig(), runtime or RuntimeConfig()
    if source.runtime == "llamacpp":
        if runtime.activation_sparsity > 0:
            raise PrunelabError("--activation-sparsity runs in the torch runtime, not in llama.cpp")
        return _bench_llamacpp(cfg, source, prune_cfg, json_path)
    check_runtime(source, runtime)
    if prune_cfg is not None and runtime.activation_sparsity > 0:
        raise PrunelabError("calibrate activation thresholds on the pruned model: prune, calibrate-activations, bench")
    bench_intensity(cfg)  # a bad country code or an unavailable explicit energy source fails before heavy work
    if cfg.energy in ("rapl", "nvml"):
        select_meter(cfg.energy, source.device, cpu_watts=cfg.cpu_watts)
    if prune_cfg is not None:
        make_pruner(prune_cfg)
    with PeakMemory("load", source.device) as load_mem:
        lm, runtime_info = load_for_run(source, runtime)
    check_bench_lengths(lm.model, cfg)
    phases = [load_mem]
    pruned = None
    if prune_cfg is not None:
        with PeakMemory("prune", source.device) as prune_mem:
            pruned = prune(lm.model, prune_cfg, tokenizer=lm.tokenizer)
        phases.append(prune_mem)
    report = {"model": lm.source, **run_bench(lm.model, cfg, prunable_layers(lm.model), phases)}
    report["activation_sparsity"] = runtime_info["activation_sparsity"]
    report["kernels_by_shape"] = runtime_info["kernels_by_shape"]
    report["runtime"] = runtime_info
    if pruned is not None:
        report["pruning"] = {k: v for k, v in pruned.to_dict().items() if k != "layers"}
    report["time"] = datetime.now(UTC).isoformat(timespec="seconds")
    if json_path:
        write_json_atomic(json_path, report)
    return report


def _bench_llamacpp(
    cfg: BenchConfig, source: ModelConfig, prune_cfg: PruneConfig | None, json_path: str | None
) -> dict[str, Any]:
    """The same measurements of a GGUF file in llama.cpp (`runtime/llamacpp.py:bench`), same JSON shape."""
    from prunelab.api.evaluate import gguf_for_runtime
    from prunelab.runtime import llamacpp

    if prune_cfg is not None:
        raise PrunelabError("--runtime llamacpp benchmarks a GGUF as it is: prune, then export, then bench")
    path = gguf_for_runtime(source)
    bench_intensity(cfg)
    report = {"model": str(path), "runtime": "llamacpp", **llamacpp.bench(path, cfg)}
    report.update(activation_sparsity=0.0, kernels_by_shape={})  # the torch bench's keys: llama.cpp runs dense
    report["time"] = datetime.now(UTC).isoformat(timespec="seconds")
    if json_path:
        write_json_atomic(json_path, report)
    return report
