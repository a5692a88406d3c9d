"""Non-uniform layer-wise sparsity: OWL (Yin et al., 2024, "Outlier Weighed Layerwise sparsity").

A block whose Wanda scores |W| * ||X|| hold more outliers (scores above M times the block's mean score) matters
more and gets less sparsity. As in the reference code, ratios are measured on the dense model (inputs propagated
through dense blocks), min-max normalised to [0, 2 lambda] and centred on the target. Two guarantees the reference
does not give, and tests check: every block stays within +/- lambda of the target (deviations are scaled down
when a skewed ratio would push one further), and the parameter-weighted mean sparsity equals the target exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from prunelab import calibration
from prunelab.errors import PrunelabError
from prunelab.models import weight_2d
from prunelab.pruning.blocks import BlockStore


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


def owl_allocation(ratios: list[float], sizes: list[int], target: float, lam: float) -> list[float]:
    """Block sparsities: more outliers -> less sparsity; within target +/- lam; weighted mean == target."""
    if target + lam >= 1.0 or target - lam < 0.0:
        raise PrunelabError(f"OWL: target {target:g} +/- lambda {lam:g} leaves [0, 1); lower --owl-lambda")
    r = torch.tensor(ratios, dtype=torch.float64)
    w = torch.tensor(sizes, dtype=torch.float64)
    spread = float(r.max() - r.min())
    if spread == 0.0 or lam == 0.0:
        return [target] * len(ratios)
    r = (r - r.min()) / spread * (2 * lam)
    deviation = r - (r * w).sum() / w.sum()  # weighted mean zero
    biggest = float(deviation.abs().max())
    if biggest > lam:
        deviation *= lam / biggest
    return [float(target - d) for d in deviation]
