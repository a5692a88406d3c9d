"""Pruning methods behind one explicit registry.

Adding a method is one file and one line in `METHODS`; the shared contract test (tests/test_methods_contract.py)
then covers it through the capabilities the class declares. The registry loads a method's module on first use,
so listing the names (`--method` choices, `prunelab --help`) imports no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from prunelab.config.pattern import Pattern, parse_pattern
from prunelab.config.prune import PruneConfig  # re-exported for convenience
from prunelab.registry import Registry

if TYPE_CHECKING:
    from prunelab.pruning.base import Pruner

METHODS: Registry[type[Pruner]] = Registry(
    "method",
    {
        "magnitude": "prunelab.pruning.magnitude:Magnitude",
        "wanda": "prunelab.pruning.wanda:Wanda",
        "sparsegpt": "prunelab.pruning.sparsegpt:SparseGPT",
        "ria": "prunelab.pruning.ria:RIA",
        "structured": "prunelab.pruning.structured.method:Structured",
        "trajectory": "prunelab.pruning.trajectory:Trajectory",
    },
)


def get_method(name: str) -> type[Pruner]:
    """The method class registered under `name`, or a did-you-mean error."""
    return METHODS.lookup(name)


def make_pruner(cfg: PruneConfig, stages: Sequence[str] = ()) -> Pruner:
    """The configured method, validated (options, sparsity, pattern); `stages` by name (see `pruning.stages`)."""
    cls = get_method(cfg.method)
    if not stages:
        return cls(cfg)
    from prunelab.pruning.base import LayerwisePruner

    if not issubclass(cls, LayerwisePruner):
        from prunelab.errors import PrunelabError

        raise PrunelabError(f"method '{cfg.method}' does not prune layer by layer, so it takes no stages")
    return cls(cfg, stages=stages)


_BASE = ["Capabilities", "LayerResult", "LayerwisePruner", "Pruner", "PruneResult"]
_LAZY = dict.fromkeys(_BASE, "prunelab.pruning.base")


def __getattr__(name: str) -> Any:
    """Classes load on first use (`from prunelab.pruning import Wanda` still works)."""
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if not name.startswith("_"):
        for cls in METHODS.values():  # a registered class by its name: Wanda, Magnitude, ...
            if cls.__name__ == name:
                return cls
    raise AttributeError(f"module 'prunelab.pruning' has no attribute '{name}'")


__all__ = [
    "METHODS",
    "Capabilities",
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
