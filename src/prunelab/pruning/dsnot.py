"""DSnoT (Zhang et al., ICLR 2024, "Dynamic Sparse No Training"): training-free prune-and-grow from any mask.

Why a stage: the method's mask (magnitude, Wanda, SparseGPT, ...) is only its score's guess at the weights that
matter; swapping a few weights per output row, guided by the calibration inputs, cuts the layer's reconstruction
error without any training and without changing the count or the pattern. So it runs after every layer-wise
method, written once here.

Per output row, with delta = dense weight - pruned weight (the row's output error is delta . x):
- the *expected* error is eps = delta . E[x] (DSnoT's reconstruction error); the weight revived (grown) is the
  pruned one whose revival moves eps towards zero most per unit of its input's variance, sign(eps) w_j E[x_j] /
  Var[x_j] (DSnoT's growth criterion with its variance term);
- the weight pruned in exchange, and whether the swap is made at all, come from the exact mean squared error over
  the calibration tokens, delta^T E[x x^T] delta = eps^2 + delta^T Cov[x] delta (the expected error squared plus
  its variance): the kept weight (of the same M-group under N:M) whose removal, with the revival, lowers it most.
  A swap that would not lower it is refused (and its candidate not tried again), so the error never increases
  (DSnoT's own pruning criterion, lowest Wanda score of the right sign, only approximates this).
Each cycle tries one swap in every row still active (vectorised over rows); a row stops after `dsnot_cycles`
tries, when it has no candidate left, or once |eps| <= `dsnot_threshold`.

Numerics checked against the authors' code (github.com/zyxxmu/DSnoT): the growth ranking is theirs, up to their
per-sequence rather than per-token scale of the expected error (so `dsnot_threshold` here is per token).
"""

from __future__ import annotations

import torch

from prunelab.calibration import Moments, Statistic
from prunelab.config.pattern import Pattern
from prunelab.pruning.stages import RefineStage


def layer_error(dense: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, second_moment: torch.Tensor) -> float:
    """Mean squared output error over the calibration tokens, sum over rows of delta^T E[x x^T] delta."""
    delta = dense - weight.masked_fill(mask, 0.0)
    return float(((delta @ second_moment) * delta).sum())


def dsnot_refine(
    weight: torch.Tensor,
    dense: torch.Tensor,
    mask: torch.Tensor,
    stat: Moments,
    pattern: Pattern,
    cycles: int,
    threshold: float,
) -> tuple[torch.Tensor, int]:
    """(new mask, swaps made) for a float32 (out, in) `weight` (revived entries are set in place to their dense
    value); `mask` is True where pruned. Counts per row and N:M groups are kept exactly."""
    rows = weight.shape[0]
    h = stat.matrix
    mean, var = stat.mean, stat.var.clamp_min(1e-12)
    h_diag = torch.diagonal(h)
    mask = mask.clone()
    kept = weight.masked_fill(mask, 0.0)  # what the layer computes with
    delta = dense - kept
    hd = delta @ h  # (rows, in): E[x x^T] delta per row, kept up to date swap by swap
    err = (hd * delta).sum(1)  # exact mean squared error per row
    eps = delta @ mean  # expected error per row
    growth = dense * mean / var  # DSnoT's growth criterion, before the sign of eps
    tried = ~mask  # growth candidates: pruned weights not tried yet
    ar = torch.arange(rows, device=weight.device)
    # Under N:M the weight pruned in exchange lies in the revived weight's group of m columns: the change below
    # is computed on those m columns only (rows x m, not rows x in). Unstructured, it is any kept weight of the row;
    # the kept^2 H_pp term is then carried (it changes only at swapped entries) instead of recomputed each cycle.
    span = torch.arange(pattern.m, device=weight.device) if pattern.is_nm else None
    kept_sq_h = None if pattern.is_nm else kept.square() * h_diag
    active = torch.ones(rows, dtype=torch.bool, device=weight.device)
    swaps = 0
    for _ in range(cycles):
        active &= (eps.abs() > threshold) & (~tried).any(1) & (err > 0)
        if not bool(active.any()):
            break
        score = (torch.sign(eps).unsqueeze(1) * growth).masked_fill(tried, float("-inf"))
        g = score.argmax(1)
        a = dense[ar, g]  # the revived value
        # Change of the row's error for reviving g and pruning p, for every candidate p at once:
        # -2 a hd_g + a^2 H_gg + 2 b_p (hd_p - a H_gp) + b_p^2 H_pp, with b_p the value p loses.
        gain = -2 * a * hd[ar, g] + a * a * h_diag[g]
        if span is not None:
            cand = (g // pattern.m * pattern.m).unsqueeze(1) + span  # (rows, m): the columns of g's group
            b_c = kept.gather(1, cand)
            change = (
                gain.unsqueeze(1)
                + 2 * b_c * (hd.gather(1, cand) - a.unsqueeze(1) * h[g.unsqueeze(1), cand])
                + b_c.square() * h_diag[cand]
            )
            change = change.masked_fill(mask.gather(1, cand), float("inf"))
            j = change.argmin(1)
            p, best = cand[ar, j], change[ar, j]
        else:
            h_g = h[g]  # (rows, in)
            change = gain.unsqueeze(1) + 2 * kept * (hd - a.unsqueeze(1) * h_g) + kept_sq_h
            change = change.masked_fill(mask, float("inf"))
            p = change.argmin(1)
            best = change[ar, p]
        accept = active & (best < -1e-6 * err)  # a clear decrease, not float noise
        tried[ar[active], g[active]] = True
        if not bool(accept.any()):
            continue
        r, g, p, a = ar[accept], g[accept], p[accept], a[accept]
        b = kept[r, p]
        hd[r] += b.unsqueeze(1) * h[p] - a.unsqueeze(1) * h[g]
        eps[r] += b * mean[p] - a * mean[g]
        err[r] += best[accept]
        kept[r, g], kept[r, p] = a, 0.0
        if kept_sq_h is not None:
            kept_sq_h[r, g], kept_sq_h[r, p] = a * a * h_diag[g], 0.0
        mask[r, g], mask[r, p] = False, True
        tried[r, p] = True  # a weight pruned by a swap is not grown back
        weight[r, g] = a
        swaps += int(accept.sum())
    return mask, swaps


class DSnoT(RefineStage):
    name = "dsnot"
    summary = "training-free prune-and-grow from the method's mask (Zhang et al. 2024)"
    statistic = "moments"

    def refine(
        self, name: str, weight: torch.Tensor, dense: torch.Tensor, mask: torch.Tensor, stat: Statistic | None,
        sparsity: float, pattern: Pattern,
    ) -> torch.Tensor:  # fmt: skip
        assert isinstance(stat, Moments)
        mask, swaps = dsnot_refine(weight, dense, mask, stat, pattern, self.cfg.dsnot_cycles, self.cfg.dsnot_threshold)
        self.results["swaps"] = self.results.get("swaps", 0) + swaps
        return mask
