"""Run one sweep point on a model in memory: restore, prune, evaluate, measure.

This module is the sweep's only contact with the rest of prunelab, through narrow adapters, one per concern:
`prune_model` (the one prune path, `prunelab.pruning.run.prune` = `prunelab.api.prune`), `measure_perplexity`
(evaluation.perplexity), `measure_zeroshot` (evaluation.zeroshot), `measure_costs` (measurement.bench). Each returns
flat metrics named as in `prunelab.report.metrics`; a metric that was not measured is absent, never guessed.

Restoring instead of reloading: mask-only methods change weight values, not shapes, so the dense weights are kept
once as a CPU state dict and copied back before every point (a fraction of a second for a 135M model, against
seconds for a reload). Structured points change shapes: they work on a deep copy of the restored model.
"""

from __future__ import annotations

import copy
import json
import logging
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab import data
from prunelab.config.bench import FOOTPRINT_FIELDS, BenchConfig, FootprintConfig
from prunelab.config.prune import PruneConfig
from prunelab.errors import PrunelabError
from prunelab.evaluation.perplexity import perplexity
from prunelab.models import LoadedModel, check_context, prunable_layers
from prunelab.pruning import make_pruner
from prunelab.pruning.run import calibration_windows, prune
from prunelab.runtime.sparse import RuntimeHandle, apply_activation_sparsity
from prunelab.runtime.thresholds import ThresholdTable, calibrate_thresholds
from prunelab.sweep.config import SweepConfig
from prunelab.sweep.grid import Point
from prunelab.sweep.store import crash_hook

log = logging.getLogger(__name__)

StageLog = Callable[[str], None]


@dataclass
class Context:
    """What every point of one process shares: the model, its dense weights, and data computed once."""

    cfg: SweepConfig
    lm: LoadedModel
    dense_state: dict[str, torch.Tensor] | None = None  # None: the model is fresh (a Ray task loads its own)
    _calib: dict[str, torch.Tensor] = field(default_factory=dict)
    _windows: dict[str, torch.Tensor] = field(default_factory=dict)
    _zeroshot_plan: Any = None
    _tables: dict[str, ThresholdTable] = field(default_factory=dict)

    def thresholds(self, model: nn.Module, point: Point) -> ThresholdTable:
        """Activation thresholds calibrated on the point's pruned model, once per prune config (pruning is seeded,
        so points that differ only in activation sparsity share one pruned model and one table)."""
        cfg = point.prune
        assert cfg is not None
        key = json.dumps(cfg.model_dump(), sort_keys=True, default=str)
        if key not in self._tables:
            batch = cfg.calib_batch(next(model.parameters()).device.type)
            self._tables[key] = calibrate_thresholds(model, self.calib(cfg), batch_size=batch)
        return self._tables[key]

    def calib(self, cfg: PruneConfig) -> torch.Tensor:
        """The calibration windows of `cfg`, built once per distinct calibration (usually once per sweep)."""
        key = json.dumps(cfg.calibration_record(), sort_keys=True)
        if key not in self._calib:
            self._calib[key] = calibration_windows(self.lm.model, self.lm.tokenizer, cfg)
        return self._calib[key]

    def windows(self, source: str) -> torch.Tensor:
        if source not in self._windows:
            ev = self.cfg.evaluation
            ids = data.tokenize(self.lm.tokenizer, data.load_text(source, "eval").text)
            self._windows[source] = data.eval_windows(ids, ev.seqlen, ev.max_windows)
        return self._windows[source]

    def zeroshot_plan(self) -> Any:
        if self._zeroshot_plan is None:
            from prunelab.evaluation.zeroshot import resolve_tasks

            ev = self.cfg.evaluation
            self._zeroshot_plan = resolve_tasks(ev.tasks, ev.task_data)
        return self._zeroshot_plan


# --- checks before any heavy work ----------------------------------------------------------------------------------


def check_inputs(cfg: SweepConfig, points: list[Point] | None = None) -> None:
    """Fail on unreadable sources, unknown zero-shot tasks and deploy settings this machine cannot run (a quant or
    runtime that needs llama-cpp-python) before a model is loaded."""
    for source in [cfg.calibration.source, *cfg.evaluation.ppl]:
        data.check_source(source)
    deploys = [p.deploy for p in points or [] if p.deploy is not None]
    if deploys:
        from prunelab.export.gguf import check_quant, llamacpp_available

        for d in deploys:
            check_quant(str(d.quant))
        if any(d.runtime == "llamacpp" for d in deploys):
            if not llamacpp_available():
                raise PrunelabError("grid runtime llamacpp needs the llamacpp extra: pip install -e '.[llamacpp]'")
            if cfg.evaluation.tasks:
                raise PrunelabError("zero-shot tasks run in the torch runtime only; drop them or runtime llamacpp")
    if cfg.evaluation.tasks:
        from prunelab.evaluation.zeroshot import resolve_tasks

        resolve_tasks(cfg.evaluation.tasks, cfg.evaluation.task_data)


def check_model(cfg: SweepConfig, model: nn.Module) -> None:
    longest = max(cfg.calibration.seqlen, cfg.evaluation.seqlen)
    if cfg.measurement.enabled:
        longest = max(longest, cfg.measurement.prompt_len + cfg.measurement.gen_len)
    check_context(model, longest, f"a window of {longest} tokens")


# --- dense weights -------------------------------------------------------------------------------------------------


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the state dict; tied tensors (embeddings/lm_head) are copied once and shared."""
    copies: dict[tuple[Any, ...], torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        # Same storage, shape and dtype = one tied tensor; empty tensors all sit at address 0 and are kept apart.
        key = (t.data_ptr(), tuple(t.shape), t.dtype) if t.numel() else (name,)
        if key not in copies:
            copies[key] = t.detach().to("cpu", copy=True)
        state[name] = copies[key]
    return state


def restore(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy the dense weights back in place (module identity and device are kept)."""
    model.load_state_dict(state, strict=True)


# --- adapters ------------------------------------------------------------------------------------------------------


def prune_model(ctx: Context, model: nn.Module, point: Point) -> dict[str, Any]:
    """Prune `model` in place as the point says, through the one prune path, calibration shared across points."""
    cfg = point.prune
    assert cfg is not None
    calib = ctx.calib(cfg) if make_pruner(cfg).needs_calibration else None
    result = prune(model, cfg, calib, ctx.lm.tokenizer)
    return {k: v for k, v in result.to_dict().items() if k != "layers"}


def prune_metered(
    ctx: Context, model: nn.Module, point: Point
) -> tuple[dict[str, Any], dict[str, float], list[dict[str, Any]]]:
    """`prune_model` with the energy and carbon of any training inside it (structured's `recover_steps`, a recovery)
    metered by the sweep's measurement settings, the `prunelab prune` protocol (`measurement.footprint.metering`).
    Returns (prune details, `training_energy_j`/`training_g_co2eq` when something trained and was metered, the
    span records). `measurement: {enabled: false}` meters nothing."""
    m = ctx.cfg.measurement
    if not m.enabled:
        return prune_model(ctx, model, point), {}, []
    from prunelab.measurement.footprint import metering

    bench = bench_config(m)
    spans = metering(FootprintConfig(**{k: getattr(bench, k) for k in FOOTPRINT_FIELDS}))
    with spans:
        out = prune_model(ctx, model, point)
    joules = [r["energy"]["joules"] for r in spans.records if r and r["energy"]["joules"] is not None]
    grams = [r["carbon"]["g_co2eq"] for r in spans.records if r and r["carbon"]["g_co2eq"] is not None]
    metrics = {"training_energy_j": float(sum(joules))} if joules else {}
    if grams:
        metrics["training_g_co2eq"] = float(sum(grams))
    return out, metrics, [r for r in spans.records if r]


def count_params(model: nn.Module) -> dict[str, float]:
    """Parameters and non-zero parameters, each tensor counted once (tied embeddings are one tensor)."""
    seen: set[int] = set()
    params = nonzero = 0
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        params += p.numel()
        nonzero += int(torch.count_nonzero(p))
    return {"params": float(params), "nonzero_params": float(nonzero)}


def measure_perplexity(
    ctx: Context, model: nn.Module, gguf: Path | None = None
) -> tuple[dict[str, float], dict[str, Any]]:
    """`perplexity` (first source, the headline) and `perplexity@SOURCE` for every source; given a GGUF, from
    llama.cpp's logits on the same windows."""
    ev = ctx.cfg.evaluation
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    for i, source in enumerate(ev.ppl):
        if gguf is not None:
            from prunelab.runtime import llamacpp

            r = llamacpp.perplexity(gguf, ctx.windows(source))
        else:
            r = perplexity(model, ctx.windows(source), ev.batch_size, desc=f"ppl {source}")
        if i == 0:
            metrics["perplexity"] = r.perplexity
        metrics[f"perplexity@{source}"] = r.perplexity
        details[source] = r.to_dict()
    return metrics, details


def measure_zeroshot(ctx: Context, model: nn.Module) -> tuple[dict[str, float], dict[str, Any]]:
    """`zeroshot_mean` and `acc@TASK` through prunelab.evaluation.zeroshot (lm-evaluation-harness)."""
    from prunelab.evaluation.zeroshot import run_tasks, zeroshot_mean

    ev = ctx.cfg.evaluation
    results = run_tasks(model, ctx.lm.tokenizer, ctx.zeroshot_plan(), ev.limit, ev.batch_size)
    metrics: dict[str, float] = {f"acc@{name}": r.acc for name, r in results.items()}
    mean = zeroshot_mean(results)
    if mean is not None:
        metrics["zeroshot_mean"] = mean
    return metrics, {name: r.to_dict() for name, r in results.items()}


def bench_config(m: Any) -> BenchConfig:
    """The sweep's measurement section as the `BenchConfig` it is a lighter view of."""
    fields: dict[str, Any] = {
        "prompt_lens": [m.prompt_len],
        "gen_len": m.gen_len,
        "batches": m.batches,
        "repeats": m.repeats,
        "warmup": m.warmup,
        "threads": m.threads,
        "energy": m.energy,
        "country": m.country,
        "region": m.region,
        "grid_intensity": m.grid_intensity,
        "size": m.size,
        "sparse_kernels": m.sparse_kernels,
    }
    if m.cpu_watts is not None:
        fields["cpu_watts"] = m.cpu_watts
    return BenchConfig(**fields)


def _median(stats: Any) -> float | None:
    return stats.get("median") if isinstance(stats, dict) else None


def measure_costs(ctx: Context, model: nn.Module, gguf: Path | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """Size, latency, energy and carbon through `prunelab.measurement.run_bench` (the `prunelab bench` report), or,
    given a GGUF, through llama.cpp (`runtime.llamacpp.bench`: the same protocol and report shape)."""
    m = ctx.cfg.measurement
    if gguf is not None:
        from prunelab.runtime import llamacpp

        report = llamacpp.bench(gguf, bench_config(m))
    else:
        from prunelab.measurement.bench import run_bench

        report = run_bench(model, bench_config(m), prunable_layers(model))
    size, latency = report.get("size", {}), report.get("latency", {})
    energy, carbon = report.get("energy", {}), report.get("carbon", {})
    raw: dict[str, Any] = {
        "size_mb": size["dense_bytes"] / 1e6 if size.get("dense_bytes") else None,
        "compact_size_mb": size["compact_bytes"] / 1e6 if size.get("compact_bytes") else None,
        "prefill_ms": _median(latency.get("prefill_ms", {}).get(str(m.prompt_len))),
        "decode_tokens_per_s": _median(latency.get("decode_tokens_per_s")),
        "energy_j_per_token": energy.get("joules_per_token"),
        "g_co2eq_per_1k_tokens": carbon.get("g_co2eq_per_1k_tokens"),
    }
    metrics = {k: float(v) for k, v in raw.items() if v is not None}
    details = {
        "energy": {k: energy.get(k) for k in ("energy_source", "method", "is_estimate", "joules", "joules_per_token")},
        "carbon": {
            k: carbon.get(k)
            for k in ("grid_intensity", "country", "region", "intensity_source", "source", "year", "is_estimate")
        },
        "latency": {k: latency.get(k) for k in ("prefill_ms", "decode_tokens_per_s", "throughput_tokens_per_s")},
        "size": {k: v for k, v in size.items() if k not in ("encodings",)},
        "hardware": report.get("hardware"),
        "notes": report.get("notes", []),
    }
    return metrics, details


def export_point(ctx: Context, model: nn.Module, point: Point) -> tuple[dict[str, float], dict[str, Any]]:
    """Export the (pruned) model to `<sweep folder>/points/<point id>/model.gguf` at the point's quant; its file
    size is `deploy_size_mb`, the bytes llama.cpp loads."""
    from prunelab.export.gguf import export_gguf, gguf_source

    deploy = point.deploy
    assert deploy is not None and deploy.quant is not None
    root = ctx.cfg._folder or Path(tempfile.mkdtemp(prefix="prunelab-sweep-"))
    path = root / "points" / point.point_id / "model.gguf"
    source = gguf_source(ctx.cfg.model, ctx.lm.source)
    r = export_gguf(model, ctx.lm.tokenizer, path, deploy.quant, source_gguf=source, overwrite=True)
    notes = [n for n in r["notes"] if "save no bytes" not in n]
    prune = point.prune
    if prune is not None and not point.structured:
        kind = "N:M" if ":" in point.pattern else "unstructured"
        notes.append(
            f"{kind} pruning exported to GGUF: GGUF stores the zeros dense, so this file is as large as the dense "
            f"model's at {deploy.quant} (no saving); only structured pruning and quantization shrink it"
        )
    details = {k: r[k] for k in ("path", "quant", "arch", "tensor_types", "file_bytes")}
    details.update(runtime=deploy.runtime, notes=notes)
    return {"deploy_size_mb": r["file_bytes"] / 1e6}, details


# --- one point -----------------------------------------------------------------------------------------------------


def run_point(ctx: Context, point: Point, stage_log: StageLog | None = None) -> dict[str, Any]:
    """Measure one point; returns {metrics, details, timings, seconds, started_at, host} (see store.PointRecord)."""
    say = stage_log or (lambda msg: log.info("%s: %s", point.label, msg))
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    start = time.perf_counter()
    timings: dict[str, float] = {}
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        timings[name] = time.perf_counter() - t0
        say(f"{name} {timings[name]:.1f} s")
        return out

    model = ctx.lm.model
    if ctx.dense_state is not None:
        stage("restore", lambda: restore(model, ctx.dense_state))  # type: ignore[arg-type]
    if point.structured:
        model = copy.deepcopy(model)  # shapes change: never touch the shared model
    handle: RuntimeHandle | None = None
    try:
        if point.prune is not None:
            details["prune"], training, spans = stage("prune", lambda: prune_metered(ctx, model, point))
            metrics.update(training)
            if spans:
                details["training"] = spans  # labelled: energy method/source, estimate or not, grid intensity
            metrics["achieved_sparsity"] = float(details["prune"]["achieved_sparsity"])
            metrics["prune_seconds"] = float(details["prune"]["prune_seconds"])
        else:
            metrics["achieved_sparsity"] = 0.0
        crash_hook("point", point.index)
        metrics.update(count_params(model))
        deploy = point.deploy
        gguf: Path | None = None
        if deploy is not None and deploy.quant is not None:
            deploy_metrics, details["deploy"] = stage("export", lambda: export_point(ctx, model, point))
            metrics.update(deploy_metrics)
            if deploy.runtime == "llamacpp":
                gguf = Path(details["deploy"]["path"])
        # the GGUF is exported from the plain model; activation sparsity runs in the torch runtime only
        level = point.runtime.activation_sparsity
        table = stage("calibrate activations", lambda: ctx.thresholds(model, point)) if level > 0 else None

        def applied(prefill: str) -> RuntimeHandle | None:
            # quality sees the level at every position ("threshold"); decode timing runs the deployed form
            return apply_activation_sparsity(model, table, level, prefill=prefill) if table is not None else None

        handle = applied("threshold")
        if handle is not None:
            details["runtime"] = {k: v for k, v in handle.info.items() if k != "measured_us_per_token"}
        ppl_metrics, details["perplexity"] = stage("perplexity", lambda: measure_perplexity(ctx, model, gguf))
        metrics.update(ppl_metrics)
        if ctx.cfg.evaluation.tasks:
            zs_metrics, details["zeroshot"] = stage("zero-shot", lambda: measure_zeroshot(ctx, model))
            metrics.update(zs_metrics)
        if handle is not None:
            handle.remove()
            handle = applied("dense")
        if ctx.cfg.measurement.enabled:
            cost_metrics, cost_details = stage("measure", lambda: measure_costs(ctx, model, gguf))
            metrics.update(cost_metrics)
            details.update(cost_details)
        if "deploy_size_mb" not in metrics and "size_mb" in metrics:
            metrics["deploy_size_mb"] = metrics["size_mb"]  # torch loads the saved safetensors: dense bytes
        if "deploy" in details:
            details["notes"] = [*details.get("notes", []), *details["deploy"]["notes"]]
    finally:
        if handle is not None:
            handle.remove()  # the shared model is restored next point: it must be the plain model again
        if point.structured:
            del model
    return {
        "metrics": metrics,
        "details": details,
        "timings": timings,
        "seconds": time.perf_counter() - start,
        "started_at": started_at,
        "host": socket.gethostname(),
    }
