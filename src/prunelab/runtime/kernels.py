"""CPU kernels that read fewer weight bytes per decode token, and the short measurement that picks one per shape.

Activation-sparse (the input has zeros below the threshold; W^T is stored (in, out) so that one input channel's
weights are one contiguous row):
- `index_select`: gather the kept rows of W^T (the union over the rows of a small batch), then one matmul.
  Reads the kept rows, but writes and re-reads a copy of them.
- `embedding_bag`: `F.embedding_bag(mode="sum", per_sample_weights=x)` over W^T: y = sum_j x_j W^T[j], one bag
  per token; no copy. At batch 1 that is one bag, and embedding_bag parallelises over bags: one thread.
- `embedding_bag_split`: batch 1 only, the kept channels cut into one bag per intra-op thread, bags summed after:
  the same bytes, read by every thread.
- `fused`: threshold, gather and multiply in one compiled call (`runtime.fused`; built once per machine, absent
  where it cannot be built): no Python or small torch ops per layer beyond the call itself.
- `dense`: the original layer on the thresholded input (same maths, full price).

Weight-sparse: `csr` (torch.sparse_csr matrix-vector / matrix products) against `dense`.

Which kernel wins depends on the shape, the kept fraction, the batch and the threads, and, for a decode step that
streams every layer once, on the weights being out of cache. The measurement therefore cycles over every layer of
a shape (as a decode step does) with the model's own weights, under the one timing protocol
(`measurement.timing.time_runs`, median of the runs).

Why gathering gave nothing at input width 1536 (down_proj, W 576 x 1536), from indicative single-process runs on a
shared 2-core AMD EPYC (30 layers cycled, 50% kept): (1) the dense baseline is the best case there: a GEMV whose
rows are 1536 contiguous floats streams at ~16 GB/s, against ~11 GB/s for the 576-wide shapes, so the same bytes
skipped buy less time; (2) at batch 1 embedding_bag is one bag, hence one thread (~10.7 GB/s alone), while dense
uses both; (3) index_select writes the kept rows to a fresh 1.7 MB buffer and reads them again (about 3x the
kept bytes, plus page faults), and with 2.3 KB rows (vs 6 KB for gate/up) a random half of the rows is barely
cheaper to fetch than all of them (prefetchers and DRAM pages work in larger runs: a contiguous half costs about
half, a strided half nearly the whole). `embedding_bag_split` (one bag per thread) answers (2): 95 us against
221 us dense for 1536 x 576 at 50% in that run; the bench re-measures it on a quiet machine.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from prunelab.errors import did_you_mean
from prunelab.measurement.timing import summarize, time_runs
from prunelab.runtime import fused

log = logging.getLogger(__name__)

ACT_KERNELS = ("dense", "index_select", "embedding_bag", "embedding_bag_split", "fused")
WEIGHT_KERNELS = ("dense", "csr")
ROW_BUCKETS = (1, 2, 4, 8)


def _bias(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return y if bias is None else y + bias


class Picked:
    """One thresholded input and what the gather kernels derive from it (kept indices, gathered values, bags),
    each computed on first use and then shared by every layer reading the input (q/k/v, gate/up).

    `buffers` (shape -> a preallocated (in, out) tensor, shared by the layers of a runtime) lets index_select
    write the gathered rows of W^T into memory that is already mapped, instead of a fresh allocation per layer
    per token (megabytes, so a new mapping and its page faults each time).
    """

    __slots__ = ("_bags", "_gather", "keep", "x2")

    def __init__(self, x2: torch.Tensor, keep: torch.Tensor) -> None:
        self.x2, self.keep = x2, keep
        self._gather: tuple[torch.Tensor, torch.Tensor] | None = None
        self._bags: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def gathered(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(kept column indices, the input at those columns): the union over the rows of a small batch."""
        if self._gather is None:
            x2, keep = self.x2, self.keep
            if x2.shape[0] == 1:
                idx = keep[0].nonzero().squeeze(1)
                xs = x2.index_select(1, idx)
            else:
                idx = keep.any(0).nonzero().squeeze(1)
                xs = x2.masked_fill(~keep, 0.0).index_select(1, idx)
            self._gather = (idx, xs)
        return self._gather

    def bags(self, split: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(columns, values, offsets) of embedding_bag: one bag per token, or `split` bags at batch 1."""
        if split not in self._bags:
            x2, keep = self.x2, self.keep
            cols = keep.nonzero()[:, 1]
            vals = x2[keep]
            n = x2.shape[0]
            if n == 1 and split > 1:
                per = max(1, math.ceil(cols.numel() / split))
                offsets = (torch.arange(0, split, device=x2.device) * per).clamp_(max=cols.numel())
            else:
                offsets = torch.zeros(n, dtype=torch.long, device=x2.device)
                if n > 1:
                    offsets[1:] = keep.sum(1).cumsum(0)[:-1]
            self._bags[split] = (cols, vals, offsets)
        return self._bags[split]


def index_select_kernel(
    x2: torch.Tensor,
    keep: torch.Tensor,
    wt: torch.Tensor,
    bias: torch.Tensor | None,
    picked: Picked | None = None,
    buffer: torch.Tensor | None = None,
) -> torch.Tensor:
    """(n, in) input, (n, in) keep mask, (in, out) W^T -> (n, out). `buffer`: an (in, out) tensor to gather into."""
    idx, xs = (picked or Picked(x2, keep)).gathered()
    if buffer is not None:
        w = torch.index_select(wt, 0, idx, out=buffer[: idx.numel()])
    else:
        w = wt.index_select(0, idx)
    return torch.addmm(bias, xs, w) if bias is not None else xs @ w


def embedding_bag_kernel(
    x2: torch.Tensor,
    keep: torch.Tensor,
    wt: torch.Tensor,
    bias: torch.Tensor | None,
    split: int = 1,
    picked: Picked | None = None,
    buffer: torch.Tensor | None = None,
) -> torch.Tensor:
    """One bag per token (or, at batch 1 with `split` > 1, `split` bags summed): y_i = sum_j x_ij W^T[j]."""
    split = split if x2.shape[0] == 1 else 1
    cols, vals, offsets = (picked or Picked(x2, keep)).bags(split)
    y = F.embedding_bag(cols, wt, offsets, mode="sum", per_sample_weights=vals)
    return _bias(y.sum(0, keepdim=True) if split > 1 else y, bias)


def embedding_bag_split_kernel(
    x2: torch.Tensor,
    keep: torch.Tensor,
    wt: torch.Tensor,
    bias: torch.Tensor | None,
    picked: Picked | None = None,
    buffer: torch.Tensor | None = None,
) -> torch.Tensor:
    return embedding_bag_kernel(x2, keep, wt, bias, max(1, torch.get_num_threads()), picked)


SPARSE_ACT: dict[str, Callable[..., torch.Tensor]] = {
    "index_select": index_select_kernel,
    "embedding_bag": embedding_bag_kernel,
    "embedding_bag_split": embedding_bag_split_kernel,
}


INT32_MAX = 2**31 - 1


def to_csr(weight: torch.Tensor) -> torch.Tensor:
    """(out, in) dense -> CSR with int32 indices where they fit (torch marks sparse CSR as beta; the warning says
    nothing a user can act on).

    torch builds CSR with int64 indices; on a CPU its int32 products are 2-3x faster (measured on SmolLM2 shapes,
    2 threads, one token: 576x1536 at 70% 183 -> 71 us, dense 313 us; bench/RESULTS.md) and read 4 bytes less per
    stored weight, which is what a memory-bound decode pays for.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        csr = weight.detach().to_sparse_csr()
        if csr.values().numel() > INT32_MAX or max(weight.shape) > INT32_MAX:
            return csr
        return torch.sparse_csr_tensor(
            csr.crow_indices().to(torch.int32), csr.col_indices().to(torch.int32), csr.values(), csr.shape
        )


CSR_DTYPES = (torch.float32, torch.float64)  # torch's CPU CSR products (MKL) have no half-precision kernels


def csr_kernel(x2: torch.Tensor, csr: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(n, in) x CSR (out, in) -> (n, out): a sparse matrix-vector product per decode token."""
    if x2.shape[0] == 1:
        return _bias(torch.mv(csr, x2[0]).unsqueeze(0), bias)
    return _bias(torch.sparse.mm(csr, x2.t().contiguous()).t(), bias)


# ---------------------------------------------------------------- choice


def check_kernel(name: str, known: Sequence[str], what: str) -> None:
    if name not in known:
        raise did_you_mean(name, known, what)


def _median_seconds(fn: Callable[[], Any], warmup: int, repeats: int) -> float:
    seconds, _ = time_runs(fn, warmup, repeats)
    return summarize(seconds).median


def sample_input(in_features: int, rows: int, keep: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A random (rows, in) input, one threshold that keeps about `keep` of its entries (|x| > threshold, as the
    runtime applies it: one threshold per layer) and that mask."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, in_features, generator=gen)
    flat = x.abs().flatten().sort(descending=True).values
    k = max(1, min(flat.numel(), round(keep * flat.numel())))
    threshold = float(flat[k]) if k < flat.numel() else 0.0
    return x, x.abs() > threshold, threshold


def measure_act_kernels(
    weights_t: list[torch.Tensor],
    biases: list[torch.Tensor | None],
    keep: float,
    rows: int,
    dense: list[Callable[[torch.Tensor], torch.Tensor]],
    kernels: Sequence[str] = ACT_KERNELS,
    warmup: int = 2,
    repeats: int = 5,
) -> dict[str, float]:
    """Median seconds per token of one pass over every layer of a shape, per kernel (weights out of cache)."""
    in_f = weights_t[0].shape[0]
    x, mask, threshold = sample_input(in_f, rows, keep)
    x = x.to(weights_t[0].dtype).to(weights_t[0].device)
    mask = mask.to(x.device)
    xm = x.masked_fill(~mask, 0.0)
    out: dict[str, float] = {}
    for name in kernels:
        if name == "embedding_bag_split" and (rows > 1 or torch.get_num_threads() == 1):
            continue
        if name == "fused" and not fused.usable(x.dtype):
            continue
        if name == "dense":

            def run(fs=dense) -> None:
                for f in fs:
                    f(xm)
        elif name == "fused":

            def run() -> None:
                for wt, b in zip(weights_t, biases, strict=True):
                    fused.fused_kernel(x, wt, b, threshold)
        else:
            fn = SPARSE_ACT[name]

            def run(fn=fn) -> None:
                for wt, b in zip(weights_t, biases, strict=True):
                    fn(x, mask, wt, b)

        with torch.inference_mode():
            out[name] = _median_seconds(run, warmup, repeats) / rows
    return out


def measure_weight_kernels(
    dense: list[Callable[[torch.Tensor], torch.Tensor]],
    csrs: list[torch.Tensor],
    in_features: int,
    rows: int = 1,
    warmup: int = 2,
    repeats: int = 5,
) -> dict[str, float]:
    """Median seconds per token of one pass over a set of same-shape layers: dense against CSR."""
    x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(0)).to(csrs[0].dtype)

    def run_dense() -> None:
        for f in dense:
            f(x)

    def run_csr() -> None:
        for c in csrs:
            csr_kernel(x, c, None)

    with torch.inference_mode():
        return {
            "dense": _median_seconds(run_dense, warmup, repeats) / rows,
            "csr": _median_seconds(run_csr, warmup, repeats) / rows,
        }
