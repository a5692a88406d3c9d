"""Pure mask arithmetic: which weights to remove given scores, a count and a pattern.

Conventions (tested by hand-computed cases):
- A mask is boolean, True where a weight is pruned.
- Lower score = less important = pruned first. Ties are broken by position: the lower index goes first, so
  results never depend on a sort's whims.
- Patterns (`N:M`) and the rounding rule of counts are defined in `prunelab.config.pattern` (re-exported here).
"""

from __future__ import annotations

import numpy as np
import torch

from prunelab.config.pattern import UNSTRUCTURED, Pattern, count_to_prune, parse_pattern
from prunelab.errors import PrunelabError

__all__ = ["UNSTRUCTURED", "Pattern", "count_to_prune", "is_valid_nm", "lowest", "nm_mask", "parse_pattern",
           "per_layer_mask", "per_row_mask"]  # fmt: skip


def _kth_value(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest score along the last dimension, keepdim. On a CPU, for float rows longer than a small
    group, numpy's introselect: the same value as `torch.kthvalue`, about 2-3x faster (SparseGPT selects over
    128-column blocks of a layer, Wanda over every row)."""
    if scores.device.type == "cpu" and scores.dtype in (torch.float32, torch.float64) and scores.shape[-1] > 16:
        part = np.partition(scores.detach().numpy(), k - 1, axis=-1)[..., k - 1 : k]
        return torch.from_numpy(np.ascontiguousarray(part))
    return torch.kthvalue(scores, k, dim=-1, keepdim=True).values


def lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the k lowest scores along the last dimension (ties: lower index first).

    Uses the k-th value as a threshold (a selection, several times faster than a full sort) and resolves
    entries equal to it by position, so the count is exact and the result deterministic.
    """
    n = scores.shape[-1]
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    kth = _kth_value(scores, k)
    mask = scores <= kth
    if bool((mask.sum(dim=-1) == k).all()):  # the usual case: no tie straddles the threshold
        return mask
    below = scores < kth
    ties = mask & ~below
    need = k - below.sum(dim=-1, keepdim=True)
    return below | (ties & (ties.cumsum(dim=-1) <= need))


def per_row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the same count from every output row (Wanda's comparison group)."""
    return lowest(scores, count_to_prune(scores.shape[1], sparsity))


def per_layer_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the lowest scores of the whole matrix (magnitude's comparison group)."""
    return lowest(scores.reshape(-1), count_to_prune(scores.numel(), sparsity)).view_as(scores)


def nm_mask(scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Prune M - N of every M consecutive scores in each row."""
    rows, cols = scores.shape
    if cols % pattern.m:
        raise PrunelabError(f"pattern {pattern} needs the input size ({cols}) to be a multiple of {pattern.m}")
    grouped = scores.reshape(rows, cols // pattern.m, pattern.m)
    return lowest(grouped, pattern.m - pattern.n).view(rows, cols)


def is_valid_nm(weight: torch.Tensor, pattern: Pattern) -> bool:
    """True when every group of M consecutive weights in a row has at most N non-zeros."""
    rows, cols = weight.shape
    if cols % pattern.m:
        return False
    nonzero = (weight.reshape(rows, cols // pattern.m, pattern.m) != 0).sum(-1)
    return bool((nonzero <= pattern.n).all())
