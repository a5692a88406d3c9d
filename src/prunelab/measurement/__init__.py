"""Measure what pruning buys: latency, throughput, memory, size on disk, energy and carbon, with honest labels.

Modules: `timing` (protocol, median/IQR), `latency` (prefill, decode, throughput), `memory` (peak RSS per phase),
`size` (dense and compact sparse checkpoints), `energy` (RAPL, NVML or a labelled estimate), `carbon` (grid
intensity), `sparse_kernels` (2:4 on NVIDIA GPUs), `bench` (all of them on one model). Nothing here imports
`pruning`: measurement is independent of how the zeros got there.

The names below load on first use (PEP 562), so torch-free consumers of `footprint`'s and `carbon`'s arithmetic
(the sweep report's break-even column) do not import torch through this package.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "BenchConfig": "bench",
    "run_bench": "bench",
    "load_compact": "size",
    "load_compact_into": "size",
    "save_compact": "size",
    "save_dense": "size",
    "Stats": "timing",
    "summarize": "timing",
}

__all__ = [
    "BenchConfig",
    "Stats",
    "load_compact",
    "load_compact_into",
    "run_bench",
    "save_compact",
    "save_dense",
    "summarize",
]


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(f"prunelab.measurement.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'prunelab.measurement' has no attribute {name!r}")
