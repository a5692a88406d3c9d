"""The Python API: the only place that orchestrates loading, calibration, pruning, evaluation and saving.

    from prunelab import load_model, prune, PruneConfig, evaluate
    lm = load_model()                                   # embedded SmolLM2-135M-Instruct
    result = prune(lm.model, PruneConfig(method="wanda", sparsity=0.5), tokenizer=lm.tokenizer)
    print(evaluate(lm.model, lm.tokenizer, ["shakespeare"])["shakespeare"].perplexity)

The CLI is a thin layer over `prune_job` and `eval_job`, which add the before/after evaluation, the atomic save
and the JSON report.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import torch
from torch import nn

from prunelab import data
from prunelab._util import environment, peak_rss_mb, write_json_atomic
from prunelab.config import PruneConfig
from prunelab.errors import PrunelabError
from prunelab.evaluation import zeroshot
from prunelab.evaluation.perplexity import PerplexityResult, perplexity
from prunelab.measurement.bench import BenchConfig, run_bench
from prunelab.measurement.energy import select_meter
from prunelab.measurement.memory import PeakMemory
from prunelab.models import check_output, context_length, load_model, prunable_layers, save_model, weight_2d
from prunelab.pruning import PruneResult, make_pruner
from prunelab.streaming import prune_streaming

log = logging.getLogger(__name__)


def prune(
    model: nn.Module, cfg: PruneConfig, calib: torch.Tensor | None = None, tokenizer: Any | None = None
) -> PruneResult:
    """Prune `model` in place as `cfg` says. Calibration windows are built from `cfg.calib` when not given."""
    pruner = make_pruner(cfg)
    if pruner.needs_calibration and calib is None:
        if tokenizer is None:
            raise PrunelabError(f"method '{cfg.method}' needs calibration text, and this model has no tokenizer")
        check_seqlen(model, cfg.calib_seqlen)
        calib = data.calibration_data(tokenizer, cfg.calib, cfg.calib_samples, cfg.calib_seqlen, cfg.seed)
    torch.manual_seed(cfg.seed)
    return pruner.prune(model, calib if pruner.needs_calibration else None)


def check_seqlen(model: nn.Module, seqlen: int) -> None:
    limit = context_length(model)
    if limit is not None and seqlen > limit:
        raise PrunelabError(f"seqlen {seqlen} is beyond the model's context length ({limit})")


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    sources: list[str],
    seqlen: int = 512,
    max_windows: int | None = None,
    batch_size: int | None = None,
) -> dict[str, PerplexityResult]:
    """Perplexity on each source's evaluation split."""
    check_seqlen(model, seqlen)
    results: dict[str, PerplexityResult] = {}
    for source in sources:
        windows = data.eval_windows(data.tokenize(tokenizer, data.load_text(source, "eval").text), seqlen, max_windows)
        results[source] = perplexity(model, windows, batch_size, desc=f"ppl {source}")
        log.info("perplexity %s: %.3f (%d x %d tokens)", source, results[source].perplexity, windows.shape[0], seqlen)
    return results


def sparsity_report(model: nn.Module) -> dict[str, Any]:
    """Parameter counts measured on the weights: total, inside prunable layers, and zeros there."""
    layers = prunable_layers(model)
    prunable = sum(weight_2d(m).numel() for m in layers.values())
    zeros = sum(int((weight_2d(m) == 0).sum()) for m in layers.values())
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "prunable_params": prunable,
        "prunable_zeros": zeros,
        "prunable_sparsity": zeros / prunable if prunable else 0.0,
    }


def _ppl_dict(results: dict[str, PerplexityResult]) -> dict[str, float]:
    return {k: v.perplexity for k, v in results.items()}


def prune_job(
    cfg: PruneConfig,
    model: str | None = None,
    output: str | None = None,
    overwrite: bool = False,
    ppl: list[str] | None = None,
    seqlen: int = 512,
    max_windows: int | None = 16,
    evaluate_before: bool = True,
    dtype: str = "auto",
    device: str = "cpu",
    json_path: str | None = None,
    device_map: str | None = None,
) -> dict[str, Any]:
    """Load, evaluate, prune, evaluate, save: the main job of the CLI. Returns the JSON report."""
    check_output(output, overwrite)
    pruner = make_pruner(cfg)  # validate method, pattern, sparsity and options before any heavy work
    for source in [*(ppl or []), *([cfg.calib] if pruner.needs_calibration else [])]:
        data.check_source(source)
    started = time.perf_counter()
    lm = load_model(model, dtype=dtype, device=device, device_map=device_map)
    load_seconds = time.perf_counter() - started
    ppl = ppl or []
    report: dict[str, Any] = {"base_model": lm.source, "config": cfg.model_dump(), "load_seconds": load_seconds}
    if ppl:
        check_seqlen(lm.model, seqlen)
    if ppl and evaluate_before:
        before = evaluate(lm.model, lm.tokenizer, ppl, seqlen, max_windows)
        report["perplexity_before"] = _ppl_dict(before)
    rss_before_prune = peak_rss_mb()
    result = prune(lm.model, cfg, tokenizer=lm.tokenizer)
    report.update(result.to_dict())
    report["peak_rss_mb"] = peak_rss_mb()
    report["peak_rss_mb_before_prune"] = rss_before_prune
    report["calibration"] = cfg.calibration_record() if pruner.needs_calibration else None
    if ppl:
        after = evaluate(lm.model, lm.tokenizer, ppl, seqlen, max_windows)
        report["perplexity"] = _ppl_dict(after)
        if "perplexity_before" in report:
            # Relative degradation per corpus: pruning calibrated on one kind of text can hurt another far more.
            report["perplexity_change"] = {
                k: v / report["perplexity_before"][k] - 1 for k, v in report["perplexity"].items()
            }
        report["perplexity_eval"] = {k: v.to_dict() for k, v in after.items()}
    report.update(sparsity_report(lm.model))
    report["environment"] = environment()
    report["time"] = datetime.now(UTC).isoformat(timespec="seconds")
    if output:
        meta = {k: v for k, v in report.items() if k != "perplexity_eval"}
        save_model(lm.model, lm.tokenizer, output, meta, overwrite)
        report["output"] = str(output)
    report["total_seconds"] = time.perf_counter() - started
    if json_path:
        write_json_atomic(json_path, report)
    return report


def prune_streaming_job(
    cfg: PruneConfig,
    model: str | None,
    output: str | None,
    overwrite: bool = False,
    dtype: str = "auto",
    device: str = "cpu",
    json_path: str | None = None,
) -> dict[str, Any]:
    """Prune a local safetensors checkpoint one block at a time (see `prunelab.streaming`), for models larger
    than memory. No perplexity is measured: the whole model never is in memory; evaluate the output separately."""
    report = prune_streaming(model, cfg, output, overwrite=overwrite, device=device, dtype=dtype)
    if json_path:
        write_json_atomic(json_path, report)
    return report


def eval_job(
    model: str | None = None,
    ppl: list[str] | None = None,
    seqlen: int = 512,
    max_windows: int | None = None,
    batch_size: int | None = None,
    dtype: str = "auto",
    device: str = "cpu",
    json_path: str | None = None,
    device_map: str | None = None,
    tasks: list[str] | None = None,
    task_data: str | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Load a model and measure perplexity on each source, and zero-shot accuracy on `tasks` if given.

    `ppl=None` means shakespeare, except when `tasks` are given: then perplexity runs only on sources named.
    """
    if ppl is None:
        ppl = [] if tasks else ["shakespeare"]
    for source in ppl:
        data.check_source(source)
    plan = zeroshot.resolve_tasks(tasks, task_data) if tasks else None  # bad task names fail before the model loads
    lm = load_model(model, dtype=dtype, device=device, device_map=device_map)
    if ppl:
        check_seqlen(lm.model, seqlen)
    results = evaluate(lm.model, lm.tokenizer, ppl, seqlen, max_windows, batch_size) if ppl else {}
    report: dict[str, Any] = {
        "model": lm.source,
        "perplexity": _ppl_dict(results),
        "perplexity_eval": {k: v.to_dict() for k, v in results.items()},
        "tokens": sum(r.windows * r.seqlen for r in results.values()),
        "seconds": sum(r.seconds for r in results.values()),
        **sparsity_report(lm.model),
        "peak_rss_mb": peak_rss_mb(),
        "environment": environment(),
    }
    if plan is not None:
        scores = zeroshot.run_tasks(lm.model, lm.tokenizer, plan, limit, batch_size)
        report["zeroshot"] = {k: v.to_dict() for k, v in scores.items()}
        report["zeroshot_mean"] = zeroshot.zeroshot_mean(scores)
        report["zeroshot_setup"] = {"limit": limit, "task_data": task_data, **zeroshot.harness_info(batch_size)}
        report["peak_rss_mb"] = peak_rss_mb()
    if json_path:
        write_json_atomic(json_path, report)
    return report


def _check_bench_lengths(model: nn.Module, cfg: BenchConfig) -> None:
    limit = context_length(model)
    longest = max(cfg.prompt_lens) + cfg.gen_len
    if limit is not None and longest > limit:
        raise PrunelabError(
            f"prompt {max(cfg.prompt_lens)} + {cfg.gen_len} generated tokens exceed the context ({limit})"
        )


def bench(model: nn.Module, cfg: BenchConfig | None = None) -> dict[str, Any]:
    """Measure an in-memory model: latency, throughput, memory, size, energy, carbon (see prunelab.measurement)."""
    cfg = cfg or BenchConfig()
    _check_bench_lengths(model, cfg)
    return run_bench(model, cfg, prunable_layers(model))


def bench_job(
    cfg: BenchConfig,
    model: str | None = None,
    dtype: str = "auto",
    device: str = "cpu",
    prune_cfg: PruneConfig | None = None,
    json_path: str | None = None,
) -> dict[str, Any]:
    """Load (and optionally prune) a model, then benchmark it; load and prune peak memory are measured too."""
    cfg.intensity()  # a bad country code or an unavailable explicit energy source fails before any heavy work
    if cfg.energy in ("rapl", "nvml"):
        select_meter(cfg.energy, device, cpu_watts=cfg.cpu_watts)
    if prune_cfg is not None:
        make_pruner(prune_cfg)
    with PeakMemory("load", device) as load_mem:
        lm = load_model(model, dtype=dtype, device=device)
    _check_bench_lengths(lm.model, cfg)
    phases = [load_mem]
    pruned = None
    if prune_cfg is not None:
        with PeakMemory("prune", device) as prune_mem:
            pruned = prune(lm.model, prune_cfg, tokenizer=lm.tokenizer)
        phases.append(prune_mem)
    report = {"model": lm.source, **run_bench(lm.model, cfg, prunable_layers(lm.model), phases)}
    if pruned is not None:
        report["pruning"] = {k: v for k, v in pruned.to_dict().items() if k != "layers"}
    report["time"] = datetime.now(UTC).isoformat(timespec="seconds")
    if json_path:
        write_json_atomic(json_path, report)
    return report


def sweep_job(
    config_path: str,
    out: str,
    executor: str = "local",
    ray_address: str | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    write_report: bool = True,
) -> dict[str, Any]:
    """Run (or resume) a sweep into `out`, then write `out/report.html` (see prunelab.sweep, prunelab.report)."""
    from prunelab.sweep import RayOptions, load_sweep_config, run_sweep

    cfg = load_sweep_config(config_path)
    outcome = run_sweep(cfg, out, executor, RayOptions(ray_address, num_cpus, num_gpus))
    result: dict[str, Any] = {"outcome": outcome.to_dict()}
    if write_report:
        try:
            result["report"] = report_job(out, html_path=None)
        except PrunelabError as e:  # e.g. the dense point failed: the sweep itself still finished
            result["report_error"] = str(e)
    return result


def report_job(
    sweep_dir: str,
    html_path: str | None = None,
    max_ppl_increase: float | None = None,
    min_accuracy: float | None = None,
    cost: str | None = None,
    json_path: str | None = None,
    write_html: bool = True,
) -> dict[str, Any]:
    """Frontier, recommendation, markdown summary and HTML page (default SWEEP_DIR/report.html) of a sweep."""
    from pathlib import Path

    from prunelab._util import write_text_atomic
    from prunelab.report.build import build_report
    from prunelab.report.pareto import Budget
    from prunelab.sweep import ResultStore

    with ResultStore(sweep_dir, write=False) as store:
        rows = store.records()
        meta = {k: store.get_meta(k) for k in ("config", "points", "environment", "runs")}
    if not rows:
        raise PrunelabError(f"'{sweep_dir}' has no finished point yet")
    title = f"prunelab sweep: {(meta.get('config') or {}).get('name') or Path(sweep_dir).resolve().name}"
    report = build_report(rows, meta, Budget(max_ppl_increase, min_accuracy), cost, write_html, title)
    result: dict[str, Any] = {**report.to_dict(), "markdown": report.markdown, "points": [r.to_dict() for r in rows]}
    if report.html is not None:
        target = Path(html_path) if html_path else Path(sweep_dir) / "report.html"
        write_text_atomic(target, report.html)
        result["html"] = str(target)
    if json_path:
        write_json_atomic(json_path, {k: v for k, v in result.items() if k != "markdown"})
    return result
