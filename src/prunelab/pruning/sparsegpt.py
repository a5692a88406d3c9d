"""SparseGPT (Frantar & Alistarh, 2023): prune with the OBS saliency w^2 / [H^-1]_jj^2 and update the kept
weights to compensate, using H = X^T X from calibration inputs.

Faithful to the reference algorithm: dampening of 1% of the mean diagonal (raised tenfold and retried, with a log
line, when the Cholesky factorisation fails), blocks of 128 columns, the unstructured mask chosen per block from
the weights as updated so far ("adaptive mask selection"), and an N:M mask chosen per group of M columns.

Vectorised: within a group of columns whose mask is fixed (32 columns of a block when unstructured, M columns
when N:M), the column-by-column OBS recurrence of the reference code is solved at once. For row r with pruned
set P it is e_P U[P, P] = w_P (U the upper Cholesky factor of H^-1), an upper-triangular system, solved for all
rows as one batched triangular solve; the errors then update the columns to the right in one matrix product.
Same numbers as the loop (up to float rounding, checked in the tests), without a Python loop per column.
"""

from __future__ import annotations

import logging

import torch

from prunelab.calibration import Hessian, Statistic
from prunelab.config.methods import SparseGPTOptions
from prunelab.pruning.base import Capabilities, LayerwisePruner
from prunelab.pruning.masks import Pattern, count_to_prune, lowest

log = logging.getLogger(__name__)

__all__ = ["SparseGPT", "SparseGPTOptions", "factor_hessian", "inverse_cholesky", "sparsegpt_prune"]


def inverse_cholesky(h: torch.Tensor, dampening: float, max_retries: int) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor U of (H + damp I)^-1 (U^T U = H^-1), and the dampening that made it work.

    With J the index reversal, chol(J H J) = L gives H^-1 = (J L^-1 J)^T (J L^-1 J) and J L^-1 J is upper
    triangular: one factorisation and one triangular inverse instead of factor, invert, factor again.
    """
    mean_diag = torch.diagonal(h).mean().item()
    damp = dampening
    flipped = h.flip(0, 1)
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for attempt in range(max_retries + 1):
        lower, info = torch.linalg.cholesky_ex(flipped + damp * mean_diag * eye)
        if info.item() == 0:
            upper = torch.linalg.solve_triangular(lower, eye, upper=False).flip(0, 1)
            if torch.isfinite(upper).all():
                return upper, damp
        if attempt < max_retries:
            log.warning("SparseGPT: Cholesky failed at dampening %g; retrying with %g", damp, damp * 10)
            damp *= 10
    raise RuntimeError(f"SparseGPT: Hessian not positive definite even at dampening {damp:g}")


def _solve_group(w: torch.Tensor, mask: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """OBS errors E (rows, g) for columns w (rows, g) with a fixed mask, u = U[g, g] (upper triangular).

    Row r solves e A_r = w ⊙ m with A_r = diag(m) U diag(m) + diag(1 - m), so e is zero where m is 0.
    g is small (at most SUBGROUP), so the per-row matrices are cheap.
    """
    g = w.shape[1]
    if g == 1:
        return w * mask / u[0, 0]
    m = mask.to(w.dtype)  # (rows, g)
    mat = m.unsqueeze(2) * u.unsqueeze(0) * m.unsqueeze(1)  # (rows, g, g)
    mat.diagonal(dim1=1, dim2=2).add_(1 - m)
    return torch.linalg.solve_triangular(mat, (w * m).unsqueeze(1), upper=True, left=False).squeeze(1)


# Columns solved at once inside a block: large enough to leave few Python iterations (4 per 128-column block),
# small enough that the per-row triangular systems stay in cache.
SUBGROUP = 32


def factor_hessian(hessian: torch.Tensor, options: SparseGPTOptions) -> tuple[torch.Tensor, float, torch.Tensor]:
    """(U, dampening used, dead input mask) for a Hessian; inputs never active get H_jj = 1 and zero weights."""
    h = hessian.clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    u, damp = inverse_cholesky(h, options.dampening, options.max_retries)
    return u, damp, dead


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    pattern: Pattern,
    options: SparseGPTOptions,
    factors: tuple[torch.Tensor, float, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, float]:
    """Prune a float32 (out, in) weight in place given the (in, in) Hessian; return (mask, dampening used)."""
    rows, cols = weight.shape
    u, damp, dead = factors if factors is not None else factor_hessian(hessian, options)
    weight[:, dead] = 0.0
    mask = torch.zeros_like(weight, dtype=torch.bool)
    bs = options.blocksize
    if pattern.is_nm and bs % pattern.m:
        bs = max(pattern.m, bs - bs % pattern.m)
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        w1 = weight[:, i1:i2].clone()
        u1 = u[i1:i2, i1:i2]
        d1 = torch.diagonal(u1)
        err = torch.zeros_like(w1)
        mask1 = torch.zeros_like(w1, dtype=torch.bool)
        if pattern.is_nm:
            groups = [(g, g + pattern.m) for g in range(0, i2 - i1, pattern.m)]
        else:
            # Cumulative rounding: the per-block counts add up to exactly round(s * rows * cols).
            k = count_to_prune(rows * i2, sparsity) - count_to_prune(rows * i1, sparsity)
            scores = w1.square() / d1.square().unsqueeze(0)
            mask1 = lowest(scores.reshape(-1), k).view_as(w1)
            groups = [(g, min(g + SUBGROUP, i2 - i1)) for g in range(0, i2 - i1, SUBGROUP)]
        for a, b in groups:
            if pattern.is_nm:
                scores = w1[:, a:b].square() / d1[a:b].square().unsqueeze(0)
                mask1[:, a:b] = lowest(scores, pattern.m - pattern.n)
            e = _solve_group(w1[:, a:b], mask1[:, a:b], u1[a:b, a:b])
            err[:, a:b] = e
            w1[:, a:] -= e @ u1[a:b, a:]
        w1[mask1] = 0.0
        weight[:, i1:i2] = w1
        weight[:, i2:] -= err @ u[i1:i2, i2:]
        mask[:, i1:i2] = mask1
    return mask, damp


class SparseGPT(LayerwisePruner):
    name = "sparsegpt"
    summary = "OBS pruning with weight reconstruction from the input Hessian (Frantar & Alistarh 2023)"
    Options = SparseGPTOptions
    capabilities = Capabilities(comparison_group="layer", takes_stages=True)
    statistic = "hessian"

    def prune_weight(self, name: str, weight: torch.Tensor, stat: Statistic | None, sparsity: float) -> torch.Tensor:
        assert isinstance(stat, Hessian)
        # Layers reading the same input (q/k/v, gate/up) share the statistic: factor its Hessian once.
        factors = getattr(stat, "sparsegpt_factors", None)
        if factors is None:
            factors = factor_hessian(stat.matrix, self.options)
            stat.sparsegpt_factors = factors  # type: ignore[attr-defined]
        mask, damp = sparsegpt_prune(weight, stat.matrix, sparsity, self.pattern, self.options, factors)
        if damp != self.options.dampening:
            self.notes.append(f"{name}: Cholesky needed dampening {damp:g}")
        return mask
