"""Pruning methods behind one explicit registry.

Adding a method is one file and one line in `METHODS`; the shared contract test then covers it.
"""

from __future__ import annotations

from prunelab.config import PruneConfig  # re-exported for convenience
from prunelab.errors import did_you_mean
from prunelab.pruning.base import LayerResult, LayerwisePruner, Pruner, PruneResult
from prunelab.pruning.magnitude import Magnitude
from prunelab.pruning.masks import Pattern, parse_pattern
from prunelab.pruning.sparsegpt import SparseGPT
from prunelab.pruning.structured import Structured
from prunelab.pruning.trajectory import Trajectory
from prunelab.pruning.wanda import Wanda

METHODS: dict[str, type[Pruner]] = {
    "magnitude": Magnitude,
    "wanda": Wanda,
    "sparsegpt": SparseGPT,
    "structured": Structured,
    "trajectory": Trajectory,
}


def get_method(name: str) -> type[Pruner]:
    """The method class registered under `name`, or a did-you-mean error."""
    try:
        return METHODS[name]
    except KeyError:
        raise did_you_mean(name, METHODS, "method") from None


def make_pruner(cfg: PruneConfig) -> Pruner:
    return get_method(cfg.method)(cfg)


__all__ = [
    "METHODS",
    "LayerResult",
    "LayerwisePruner",
    "Pattern",
    "PruneConfig",
    "PruneResult",
    "Pruner",
    "get_method",
    "make_pruner",
    "parse_pattern",
]
