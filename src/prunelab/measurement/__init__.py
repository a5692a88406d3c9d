"""Measure what pruning buys: latency, throughput, memory, size on disk, energy and carbon, with honest labels.

Modules: `timing` (protocol, median/IQR), `latency` (prefill, decode, throughput), `memory` (peak RSS per phase),
`size` (dense and compact sparse checkpoints), `energy` (RAPL, NVML or a labelled estimate), `carbon` (grid
intensity), `sparse_kernels` (2:4 on NVIDIA GPUs), `bench` (all of them on one model). Nothing here imports
`pruning`: measurement is independent of how the zeros got there.
"""

from prunelab.measurement.bench import BenchConfig, run_bench
from prunelab.measurement.size import load_compact, load_compact_into, save_compact, save_dense
from prunelab.measurement.timing import Stats, summarize

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
