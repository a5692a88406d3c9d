"""The one prune path: every caller (`prunelab.api`, the sweep, streaming, the training-aware reproduction) prunes
through `prune` here, and every prune report is built by `prune_report`.

It lives at the pruning layer, below the sweep and streaming that call it, and is what `prunelab.api.prune` is:
validate the method, build the calibration windows when the method needs them (after the one context-length
check), seed, run the method on the model in memory or on a block store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from prunelab import data
from prunelab._util import environment, peak_rss_mb
from prunelab.config.prune import PruneConfig
from prunelab.errors import PrunelabError
from prunelab.models import check_seqlen, prunable_layers, weight_2d
from prunelab.pruning import make_pruner, owl_auto
from prunelab.pruning.base import LayerwisePruner, Pruner, PruneResult
from prunelab.pruning.blocks import BlockStore

if TYPE_CHECKING:
    from prunelab.pruning.structured.method import StepRecovery

log = logging.getLogger(__name__)


def seed(value: int) -> None:
    """The one seeding call before a method runs (tie-free methods ignore it; sampling ones must not)."""
    torch.manual_seed(value)


def calibration_windows(model: nn.Module, tokenizer: Any | None, cfg: PruneConfig) -> torch.Tensor:
    """(samples, seqlen) calibration token ids from `cfg.calib`, checked against the model's context."""
    if tokenizer is None:
        raise PrunelabError(f"method '{cfg.method}' needs calibration text, and this model has no tokenizer")
    check_seqlen(model, cfg.calib_seqlen)
    return data.calibration_data(tokenizer, cfg.calib, cfg.calib_samples, cfg.calib_seqlen, cfg.seed)


def check_sources(pruner: Pruner, extra: Sequence[str] = ()) -> None:
    """Fail on unreadable calibration / evaluation sources before any heavy work."""
    for source in [*extra, *([pruner.cfg.calib] if pruner.needs_calibration else [])]:
        data.check_source(source)


def prune(
    model: nn.Module,
    cfg: PruneConfig,
    calib: torch.Tensor | None = None,
    tokenizer: Any | None = None,
    store: BlockStore | None = None,
    stages: Sequence[str] = (),
    between_steps: StepRecovery | None = None,
) -> PruneResult:
    """Prune `model` in place as `cfg` says. Calibration windows are built from `cfg.calib` when not given.

    With `store`, blocks come from it (`prunelab.streaming`); only block-local layer-wise methods take one.
    `between_steps`: what iterative structured pruning runs between its steps (a short recovery, api/recover.py).
    OWL with lambda or M `auto` first searches them on held-out calibration windows (`prunelab.pruning.owl_auto`).
    """
    pruner = make_pruner(cfg, stages)
    if between_steps is not None:  # iterative structured pruning: what runs between its steps (api/recover.py)
        if not hasattr(pruner, "between_steps"):
            raise PrunelabError(f"{describe(cfg)} has no iterative steps to recover between")
        pruner.between_steps = between_steps
    if pruner.needs_calibration and calib is None:
        calib = calibration_windows(model, tokenizer, cfg)
    if store is not None and (not isinstance(pruner, LayerwisePruner) or not pruner.caps.block_local):
        raise PrunelabError(f"{describe(cfg)} does not prune block by block (it needs every weight at once)")
    if cfg.owl_auto and isinstance(pruner, LayerwisePruner) and not pruner.pattern.is_nm:  # N:M: OWL is uniform
        assert calib is not None and store is None  # owl auto is not block-local (LayerwisePruner.caps)

        def once(c: PruneConfig, windows: torch.Tensor) -> PruneResult:
            seed(c.seed)
            return make_pruner(c, stages).prune(model, windows)

        started = time.perf_counter()
        chosen, record = owl_auto.search(model, cfg, pruner.sparsity, calib, once)
        result = once(chosen, calib)
        result.seconds = time.perf_counter() - started  # the search is part of what this prune cost
        result.extra["owl_auto"] = record
        result.notes.append(
            f"owl auto: lambda {chosen.owl_lambda:g}, M {chosen.owl_m:g} chosen from {len(record['candidates'])} "
            f"candidates by held-out calibration loss"
        )
        return result
    seed(cfg.seed)
    if store is None:
        return pruner.prune(model, calib if pruner.needs_calibration else None)
    assert isinstance(pruner, LayerwisePruner)
    return pruner.prune_blocks(model, store, calib if pruner.needs_calibration else None)


def describe(cfg: PruneConfig) -> str:
    """'method magnitude scope=global': a method with its options, for messages."""
    auto = [f"{k}=auto" for k in ("owl_lambda", "owl_m") if cfg.owl_auto and getattr(cfg, k) == "auto"]
    return " ".join([f"method '{cfg.method}'", *(f"{k}={v}" for k, v in cfg.options.items()), *auto])


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


def prune_report(
    source: str,
    cfg: PruneConfig,
    result: PruneResult,
    calibrated: bool,
    load_seconds: float,
    rss_before_prune: float,
    counts: dict[str, Any],
) -> dict[str, Any]:
    """The prune report (the JSON of `prunelab prune` and the prunelab.json beside a saved model).

    `counts` are `sparsity_report`'s keys, measured on the model in memory or gathered block by block.
    """
    report: dict[str, Any] = {"base_model": source, "config": cfg.model_dump(), "load_seconds": load_seconds}
    report["recipe"] = cfg.recipe()  # method, options, pattern, allocation, calibration, stages: enough to redo it
    report.update(result.to_dict())
    report["peak_rss_mb"] = peak_rss_mb()
    report["peak_rss_mb_before_prune"] = rss_before_prune
    report["calibration"] = cfg.calibration_record() if calibrated else None
    report.update(counts)
    report["environment"] = environment()
    report["time"] = datetime.now(UTC).isoformat(timespec="seconds")
    return report
