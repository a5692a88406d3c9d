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
from prunelab.evaluation.perplexity import PerplexityResult, perplexity
from prunelab.models import check_output, context_length, load_model, prunable_layers, save_model, weight_2d
from prunelab.pruning import PruneResult, make_pruner

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
) -> dict[str, Any]:
    """Load, evaluate, prune, evaluate, save: the main job of the CLI. Returns the JSON report."""
    check_output(output, overwrite)
    pruner = make_pruner(cfg)  # validate method, pattern, sparsity and options before any heavy work
    for source in [*(ppl or []), *([cfg.calib] if pruner.needs_calibration else [])]:
        data.check_source(source)
    started = time.perf_counter()
    lm = load_model(model, dtype=dtype, device=device)
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
    report["calibration"] = (
        {"source": cfg.calib, "samples": cfg.calib_samples, "seqlen": cfg.calib_seqlen, "seed": cfg.seed}
        if pruner.needs_calibration
        else None
    )
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


def eval_job(
    model: str | None = None,
    ppl: list[str] | None = None,
    seqlen: int = 512,
    max_windows: int | None = None,
    batch_size: int | None = None,
    dtype: str = "auto",
    device: str = "cpu",
    json_path: str | None = None,
) -> dict[str, Any]:
    """Load a model and measure perplexity on each source."""
    ppl = ppl or ["shakespeare"]
    for source in ppl:
        data.check_source(source)
    lm = load_model(model, dtype=dtype, device=device)
    check_seqlen(lm.model, seqlen)
    results = evaluate(lm.model, lm.tokenizer, ppl, seqlen, max_windows, batch_size)
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
    if json_path:
        write_json_atomic(json_path, report)
    return report
