"""The heavy-tailed self-regularisation metric alpha of a weight matrix (Martin & Mahoney), as AlphaPruning uses it.

AlphaPruning (Lu et al., NeurIPS 2024) reads how well a layer is trained from the empirical spectral density of
W^T W (its eigenvalues are W's squared singular values): the tail follows a power law p(lambda) ~ lambda^-alpha,
and a smaller alpha (a heavier tail) marks a layer that learned more structure, so it should be pruned less.

alpha is the Hill (maximum-likelihood) estimate over the tail lambda >= xmin, alpha = 1 + n / sum(log(lambda /
xmin)), with xmin chosen as in the paper's default fit ("alpha_peak", WeightWatcher's): among the eigenvalues up
to 1.5 x the peak of the histogram of log10(lambda), the one whose fitted power law is closest to the tail
(Kolmogorov-Smirnov distance). The reference also names a lower bound, but compares it on a log scale against
linear eigenvalues, so in effect there is none; none is used here either, which gives the reference's numbers.
Weights only (no calibration); float32 SVD on the CPU, float64 for the fit.
"""

from __future__ import annotations

import torch

from prunelab.errors import PrunelabError

HIST_BINS = 100  # the reference's histogram of log10 eigenvalues, whose peak bounds xmin
XMIN_PEAK_FACTOR = 1.5


def eigenvalues(weight: torch.Tensor) -> torch.Tensor:
    """Ascending eigenvalues of W^T W (squared singular values), float64, exact zeros dropped."""
    sv = torch.linalg.svdvals(weight.detach().to("cpu", torch.float32)).to(torch.float64)
    eigs = torch.sort(sv.square()).values
    return eigs[eigs > eigs[-1] * 1e-12] if eigs.numel() and eigs[-1] > 0 else eigs[:0]


def power_law_alpha(eigs: torch.Tensor) -> float:
    """alpha of the power-law tail of ascending positive values `eigs` (see the module docstring)."""
    n_all = eigs.numel()
    if n_all < 3:
        raise PrunelabError(f"alpha: a spectrum needs at least 3 nonzero eigenvalues, got {n_all}")
    logs = eigs.log()
    log10 = eigs.log10()
    lo, hi = float(log10[0]), float(log10[-1])
    peak = 10 ** (lo + (hi - lo) * int(torch.histc(log10, HIST_BINS, lo, hi).argmax()) / HIST_BINS)  # bin's left edge
    candidates = max(int((eigs[:-1] <= XMIN_PEAK_FACTOR * peak).sum()), 1)  # a prefix: eigs ascend
    i = torch.arange(candidates, dtype=torch.float64)
    n = n_all - i  # tail sizes
    tail_log_sum = logs.flip(0).cumsum(0).flip(0)[:candidates]  # sum of logs from i on
    alpha = 1 + n / (tail_log_sum - n * logs[:candidates])
    # KS distance of each fit: max over the tail j >= i of |fitted CDF - empirical CDF (j - i) / n|.
    j = torch.arange(n_all, dtype=torch.float64)
    ratio = (logs.unsqueeze(0) - logs[:candidates].unsqueeze(1)).clamp_min(0.0)  # log(lambda_j / xmin_i)
    fitted = 1 - torch.exp(-(alpha.unsqueeze(1) - 1) * ratio)
    empirical = (j.unsqueeze(0) - i.unsqueeze(1)) / n.unsqueeze(1)
    tail = j.unsqueeze(0) >= i.unsqueeze(1)
    ks = torch.where(tail, (fitted - empirical).abs(), torch.zeros_like(fitted)).amax(1)
    ks = torch.where(alpha > 1, ks, torch.ones_like(ks))  # as the reference: a fit with alpha <= 1 never wins
    return float(alpha[int(ks.argmin())])


def weight_alpha(weight: torch.Tensor) -> float:
    """alpha of one (out, in) weight matrix."""
    return power_law_alpha(eigenvalues(weight))
