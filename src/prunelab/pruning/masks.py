"""Pure mask arithmetic: which weights to remove given scores, a count and a pattern.

Conventions (tested by hand-computed cases):
- A mask is boolean, True where a weight is pruned.
- Lower score = less important = pruned first. Ties are broken by position: the lower index goes first, so
  results never depend on a sort's whims.
- `N:M` means at most N non-zeros in every M consecutive weights of a row along the input dimension (the
  hardware convention of 2:4 sparse tensor cores): M - N weights of each group are pruned, sparsity 1 - N/M.
- The number pruned from n weights at sparsity s is round(n * s), half rounded up: exact, reproducible counts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from prunelab.errors import PrunelabError


@dataclass(frozen=True)
class Pattern:
    """Unstructured (n = m = 0) or N:M semi-structured."""

    n: int = 0
    m: int = 0

    @property
    def is_nm(self) -> bool:
        return self.m > 0

    @property
    def sparsity(self) -> float | None:
        return 1 - self.n / self.m if self.is_nm else None

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else "unstructured"


UNSTRUCTURED = Pattern()


def parse_pattern(text: str) -> Pattern:
    """'unstructured' or 'N:M' with 0 < N < M."""
    if text == "unstructured":
        return UNSTRUCTURED
    match = re.fullmatch(r"(\d+):(\d+)", text.strip())
    if not match:
        raise PrunelabError(f"malformed pattern '{text}': use 'unstructured' or N:M such as 2:4")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise PrunelabError(f"malformed pattern '{text}': N:M needs 0 < N < M (N weights kept in every M)")
    return Pattern(n, m)


def count_to_prune(total: int, sparsity: float) -> int:
    """round(total * sparsity), halves rounded up."""
    return math.floor(total * sparsity + 0.5)


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
    kth = torch.kthvalue(scores, k, dim=-1, keepdim=True).values
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
