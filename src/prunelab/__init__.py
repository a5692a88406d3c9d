"""prunelab: prune Hugging Face causal LMs and measure, honestly, what the pruning buys.

The public names load on first use, so `import prunelab` (and `prunelab --help`) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from prunelab.errors import PrunelabError

if TYPE_CHECKING:
    from prunelab.api import bench, bench_job, eval_job, evaluate, prune, prune_job, sparsity_report
    from prunelab.config import PruneConfig
    from prunelab.models import load_model
    from prunelab.pruning import METHODS, get_method
    from prunelab.runtime.weights import load_sparse

_LAZY = {
    **dict.fromkeys(
        ["bench", "bench_job", "eval_job", "evaluate", "prune", "prune_job", "sparsity_report"], "prunelab.api"
    ),
    **dict.fromkeys(["METHODS", "get_method"], "prunelab.pruning"),
    "PruneConfig": "prunelab.config",
    "load_model": "prunelab.models",
    "load_sparse": "prunelab.runtime.weights",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    try:  # submodules: `from prunelab import data`
        return importlib.import_module(f"prunelab.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"prunelab.{name}":
            raise
        raise AttributeError(f"module 'prunelab' has no attribute '{name}'") from None


__all__ = [
    "METHODS",
    "PruneConfig",
    "PrunelabError",
    "bench",
    "bench_job",
    "eval_job",
    "evaluate",
    "get_method",
    "load_model",
    "load_sparse",
    "prune",
    "prune_job",
    "sparsity_report",
]
