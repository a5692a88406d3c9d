"""Sparsity patterns and the one rounding rule for counts (pure Python: the config and the CLI need them).

- `N:M` means at most N non-zeros in every M consecutive weights of a row along the input dimension (the
  hardware convention of 2:4 sparse tensor cores): M - N weights of each group are pruned, sparsity 1 - N/M.
- The number pruned from n weights at sparsity s is round(n * s), half rounded up: exact, reproducible counts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

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
