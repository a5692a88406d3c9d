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
    from prunelab.pruning.stages import Stage

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


# Stages any layer-wise method can run (`prunelab.pruning.stages`); listed here so names load without torch.
STAGES: Registry[type[Stage]] = Registry(
    "stage",
    {
        "dsnot": "prunelab.pruning.dsnot:DSnoT",
        "reconstruct": "prunelab.pruning.reconstruct:Reconstruct",
    },
)


def get_method(name: str) -> type[Pruner]:
    """The method class registered under `name`, or a did-you-mean error."""
    return METHODS.lookup(name)


def make_pruner(cfg: PruneConfig, stages: Sequence[str] = ()) -> Pruner:
    """The configured method, validated (options, sparsity, pattern, stages); the stages are `cfg.stages` and then
    `stages` (by name, see `pruning.stages`). Whether a method takes stages is its declared capability."""
    cls = get_method(cfg.method)
    names = list(dict.fromkeys([*cfg.stages, *stages]))
    for name in names:
        STAGES.lookup(name)  # unknown names: did-you-mean, before anything else
    if not names:
        return cls(cfg)
    from prunelab.errors import PrunelabError

    if not cls.capabilities.takes_stages:
        raise PrunelabError(f"method '{cfg.method}' takes no stages ({', '.join(names)}): it does not prune layer by "
                            "layer")  # fmt: skip
    pruner = cls(cfg, stages=stages)  # type: ignore[call-arg]
    if not pruner.caps.takes_stages:
        raise PrunelabError(f"method '{cfg.method}' with options {cfg.options} takes no stages ({', '.join(names)})")
    return pruner


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
    "STAGES",
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
