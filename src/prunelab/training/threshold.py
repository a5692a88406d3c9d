"""The paper's mask rule on averaged magnitudes, and the bisection that hits an exact count with it.

Shared by the trajectory method (`prunelab.pruning.trajectory`) and gradual pruning during training
(`prunelab.training.gradual`).
"""

from __future__ import annotations

import math

import torch


def threshold_mask(score: torch.Tensor, prune_rate: float) -> torch.Tensor:
    """The paper's rule: prune where score < std(score) x PruneRate (torch.std, i.e. with Bessel's correction)."""
    return score < score.std().item() * prune_rate


def find_prune_rate(score: torch.Tensor, k: int, max_iter: int = 200) -> tuple[torch.Tensor, float]:
    """(mask, PruneRate) such that the threshold rule prunes exactly k weights.

    Bisection on the PruneRate: the count below the threshold is a step function of it. When a block of tied
    scores straddles k no threshold separates them; those at the threshold are then taken in index order.
    """
    n = score.numel()
    flat = score.reshape(-1)
    std = score.std().item() if n > 1 else 0.0
    if k <= 0:
        return torch.zeros_like(score, dtype=torch.bool), 0.0
    if std == 0.0 or not math.isfinite(std):
        lo = hi = 0.0  # all equal: no threshold separates anything
    else:
        lo, hi = 0.0, flat.max().item() / std * (1 + 1e-6) + 1e-12  # count(lo) = 0 <= k <= n = count(hi)
        for _ in range(max_iter):
            mid = (lo + hi) / 2
            if not lo < mid < hi:
                break  # float resolution reached: a block of ties straddles k
            count = int((flat < std * mid).sum())
            if count == k:
                return score < std * mid, mid
            lo, hi = (mid, hi) if count < k else (lo, mid)
    mask = flat < std * lo if lo > 0 else torch.zeros_like(flat, dtype=torch.bool)
    need = k - int(mask.sum())
    rest = torch.nonzero(~mask).squeeze(1)
    order = torch.argsort(flat[rest], stable=True)[:need]  # the smallest remaining, ties in index order
    mask[rest[order]] = True
    return mask.view_as(score), lo
