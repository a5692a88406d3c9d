"""Non-uniform layer-wise sparsity: OWL (Yin et al., 2024) and AlphaPruning (Lu et al., NeurIPS 2024).

OWL: a block whose Wanda scores |W| * ||X|| hold more outliers (scores above M times the block's mean score) matters
more and gets less sparsity; ratios are measured on the dense model (inputs propagated through dense blocks).
AlphaPruning: a block whose weight spectra have heavier tails (smaller mean alpha, `prunelab.pruning.esd`) is
better trained and gets less sparsity; weights only, no calibration.

Both map a per-block score linearly onto sparsities (`linear_allocation`) with two guarantees the references do
not give, and tests check: every block stays within +/- a spread of the target (deviations are scaled down when a
skewed score would push one further), and the parameter-weighted mean sparsity equals the target exactly. OWL's
spread is lambda; AlphaPruning's is eps x target (the paper maps onto target x [1 - eps, 1 + eps] and then
rescales multiplicatively, which can push a block past that range or past 1 at high sparsity).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from prunelab import calibration
from prunelab.config.pattern import Pattern
from prunelab.config.prune import PruneConfig
from prunelab.errors import PrunelabError
from prunelab.models import weight_2d
from prunelab.pruning.blocks import BlockStore
from prunelab.pruning.esd import weight_alpha

log = logging.getLogger(__name__)


def owl_outlier_ratios(
    store: BlockStore,
    inputs: calibration.BlockInputs,
    layers_of: Callable[[BlockStore, int, nn.Module], dict[str, nn.Module]],
    m: float,
) -> tuple[list[float], list[int]]:
    """Per block: (share of Wanda scores above m x the block mean, number of prunable weights). Dense pass."""
    ratios: list[float] = []
    sizes: list[int] = []
    n = len(store)
    for i in range(n):
        block = store.load(i)
        layers = layers_of(store, i, block)
        stats = calibration.collect_statistics(
            block, layers, inputs, lambda mod: calibration.SquaredNorm(weight_2d(mod).shape[1], weight_2d(mod).device)
        )
        scores = [weight_2d(mod).abs().float() * stats[name].norm.unsqueeze(0) for name, mod in layers.items()]
        total = sum(s.numel() for s in scores)
        mean = sum(float(s.sum()) for s in scores) / max(total, 1)
        outliers = sum(int((s > m * mean).sum()) for s in scores)
        ratios.append(outliers / max(total, 1))
        sizes.append(total)
        if i + 1 < n:
            calibration.run_block(block, inputs, keep_outputs=True)
        store.release(i, block, pruned=False)
    return ratios, sizes


def linear_allocation(scores: list[float], sizes: list[int], target: float, spread: float) -> list[float]:
    """Block sparsities: higher score -> less sparsity; within target +/- spread; weighted mean == target."""
    r = torch.tensor(scores, dtype=torch.float64)
    w = torch.tensor(sizes, dtype=torch.float64)
    span = float(r.max() - r.min())
    if span == 0.0 or spread == 0.0:
        return [target] * len(scores)
    r = (r - r.min()) / span * (2 * spread)
    deviation = r - (r * w).sum() / w.sum()  # weighted mean zero
    biggest = float(deviation.abs().max())
    if biggest > spread:
        deviation *= spread / biggest
    return [float(target - d) for d in deviation]


def owl_allocation(ratios: list[float], sizes: list[int], target: float, lam: float) -> list[float]:
    """Block sparsities: more outliers -> less sparsity; within target +/- lam; weighted mean == target."""
    if target + lam >= 1.0 or target - lam < 0.0:
        raise PrunelabError(f"OWL: target {target:g} +/- lambda {lam:g} leaves [0, 1); lower --owl-lambda")
    return linear_allocation(ratios, sizes, target, lam)


def alpha_block_metrics(
    store: BlockStore, layers_of: Callable[[BlockStore, int, nn.Module], dict[str, nn.Module]]
) -> tuple[list[float], list[int]]:
    """Per block: (mean alpha of its selected layers, as the paper's block-wise mapping; prunable weights)."""
    alphas: list[float] = []
    sizes: list[int] = []
    for i in range(len(store)):
        block = store.load(i)
        layers = layers_of(store, i, block)
        values = [weight_alpha(weight_2d(mod)) for mod in layers.values()]
        alphas.append(sum(values) / len(values) if values else float("nan"))
        sizes.append(sum(weight_2d(mod).numel() for mod in layers.values()))
        store.release(i, block, pruned=False)
    known = [a for a in alphas if a == a]
    fill = sum(known) / len(known) if known else 0.0  # a block the filter empties prunes nothing: keep it neutral
    return [a if a == a else fill for a in alphas], sizes


def alpha_allocation(alphas: list[float], sizes: list[int], target: float, eps: float) -> list[float]:
    """Block sparsities: smaller alpha (heavier tail) -> less sparsity; within target x (1 +/- eps)."""
    if target * (1 + eps) >= 1.0:
        raise PrunelabError(f"alpha: target {target:g} x (1 + eps {eps:g}) reaches 1; lower --alpha-eps")
    return linear_allocation([-a for a in alphas], sizes, target, eps * target)


def block_sparsities(
    cfg: PruneConfig,
    pattern: Pattern,
    target: float,
    model: nn.Module,
    store: BlockStore,
    calib: torch.Tensor | None,
    batch_size: int,
    layers_of: Callable[[BlockStore, int, nn.Module], dict[str, nn.Module]],
    result: Any,
) -> list[float]:
    """The engine's per-block sparsities for `cfg.allocation`, recorded in `result.extra["allocation"]`."""
    sparsities = [target] * len(store)
    record: dict[str, Any] = {"scheme": cfg.allocation}
    if cfg.allocation != "uniform" and pattern.is_nm:
        result.notes.append(f"{cfg.allocation} keeps N:M patterns uniform: every layer must satisfy the same N:M")
    elif cfg.allocation == "owl":
        if cfg.owl_auto:  # resolved by `prunelab.pruning.owl_auto` before a method runs
            raise PrunelabError("--owl-lambda/--owl-m auto search an in-memory model; this path takes given values")
        assert calib is not None and not isinstance(cfg.owl_lambda, str) and not isinstance(cfg.owl_m, str)
        inputs = calibration.capture_block_inputs(model, store.first, calib, batch_size)
        ratios, sizes = owl_outlier_ratios(store, inputs, layers_of, cfg.owl_m)
        sparsities = owl_allocation(ratios, sizes, target, cfg.owl_lambda)
        result.extra["owl_outlier_ratios"] = ratios
        record.update(owl_lambda=cfg.owl_lambda, owl_m=cfg.owl_m)
    elif cfg.allocation == "alpha":
        alphas, sizes = alpha_block_metrics(store, layers_of)
        sparsities = alpha_allocation(alphas, sizes, target, cfg.alpha_eps)
        record.update(alpha_eps=cfg.alpha_eps, block_alpha=alphas)
        log.info("alpha per block: %s", ", ".join(f"{a:.2f}" for a in alphas))
    record["block_sparsity"] = sparsities
    result.extra["allocation"] = record
    return sparsities
