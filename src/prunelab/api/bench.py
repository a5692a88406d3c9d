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
from prunelab.models import check_context, context_length, prunable_layers
from prunelab.pruning import make_pruner
from prunelab.pruning.run import prune


def check_bench_lengths(model: nn.Module, cfg: BenchConfig) -> None:
    longest = max(cfg.prompt_lens) + cfg.gen_len
    what = f"prompt {max(cfg.prompt_lens)} + {cfg.gen_len} generated tokens exceed the context: {longest}"
    check_context(model, longest, what)


def fit_bench_lengths(model: nn.Module, cfg: BenchConfig) -> tuple[BenchConfig, str | None]:
    """`cfg` with its DEFAULT lengths shortened to the model's context, and a note saying so (None if unchanged).

    Only what the user did not set is shortened (`prompt_lens`, `gen_len` absent from `cfg.model_fields_set`):
    the default prompt lengths are cut to what leaves room for the generated tokens (duplicates dropped), the
    default gen_len to what an explicit prompt leaves, or to half the context when both are defaults and the
    context is that short. Lengths the user gave that do not fit are refused (`check_bench_lengths`), as before."""
    limit = context_length(model)
    longest = max(cfg.prompt_lens) + cfg.gen_len
    if limit is None or longest <= limit:
        return cfg, None
    given = cfg.model_fields_set
    prompts, gen = list(cfg.prompt_lens), cfg.gen_len
    if "gen_len" not in given:
        gen = limit - max(prompts) if "prompt_lens" in given else min(gen, limit // 2)
    if "prompt_lens" not in given:
        prompts = sorted({min(p, limit - gen) for p in prompts})
    if gen < BenchConfig.model_fields["gen_len"].metadata[0].ge or min(prompts) < 1:
        check_bench_lengths(model, cfg)  # what the user gave leaves no room: refused, naming their values
    fitted = cfg.model_copy(update={"prompt_lens": prompts, "gen_len": gen})
    check_bench_lengths(model, fitted)  # explicit values that alone exceed the context are refused here
    if fitted.prompt_lens == cfg.prompt_lens and fitted.gen_len == cfg.gen_len:
        return cfg, None
    note = (
        f"default lengths shortened to the model's context ({limit}): prompt {' '.join(map(str, cfg.prompt_lens))} "
        f"+ {cfg.gen_len} generated -> prompt {' '.join(map(str, prompts))} + {gen} generated"
    )
    return fitted, note


def _with_note(report: dict[str, Any], note: str | None) -> dict[str, Any]:
    if note is not None:
        report["notes"] = [*report.get("notes", []), note]
    return report


def bench(model: nn.Module, cfg: BenchConfig | None = None) -> dict[str, Any]:
    """Measure an in-memory model: latency, throughput, memory, size, energy, carbon (see prunelab.measurement)."""
    cfg, note = fit_bench_lengths(model, cfg or BenchConfig())
    return _with_note(run_bench(model, cfg, prunable_layers(model)), note)


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
    cfg, note = fit_bench_lengths(lm.model, cfg)
    phases = [load_mem]
    pruned = None
    if prune_cfg is not None:
        with PeakMemory("prune", source.device) as prune_mem:
            pruned = prune(lm.model, prune_cfg, tokenizer=lm.tokenizer)
        phases.append(prune_mem)
    report = {"model": lm.source, **_with_note(run_bench(lm.model, cfg, prunable_layers(lm.model), phases), note)}
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
