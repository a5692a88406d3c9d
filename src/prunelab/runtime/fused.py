"""A compiled activation-sparse kernel: threshold, gather and multiply in one call per layer.

Why: with the stock kernels the bytes saved were paid back in bookkeeping. The profile of a SmolLM2-135M decode
step at 50% activation sparsity (bench/RESULTS.md, issue 13) put the decoder matmuls plus gathers at 34 ms against
53 ms dense, but the small ops around them (abs, compare, nonzero, index_select of x, the bag offsets) at 24 ms
against 9 ms and the Python around them at 23 ms against 15 ms: 1.2x at best where the bytes promise 1.6x. This
kernel does the whole layer in one C++ call, so a decode step pays one dispatch per Linear, as dense does:

    y[i] = bias + sum over k with |x[i, k]| > t of x[i, k] * W^T[k]        (W^T stored (in, out), rows contiguous)

- one row (a decode token): the kept input channels are split between the intra-op threads, each summing whole
  contiguous rows of W^T into its own partial output, four rows per pass over the output (a quarter of the output
  loads and stores of a row-at-a-time loop); the partials are added after. Whole rows keep the reads in long runs.
- several rows (a small batch): the output columns are cut into tiles shared out between the threads; each tile
  runs every row's kept channels, so a row of W^T read for one batch row is in cache for the next.

It is built once per machine with torch's C++ extension loader (g++ and ninja; about a minute, cached under the
prunelab cache, keyed by the source, torch version and CPU flags, since it is compiled for this CPU). Where it
cannot be built (no compiler, `PRUNELAB_NO_COMPILE=1`) `available()` is False with the reason, "auto" kernel choice
uses the stock kernels, and asking for "fused" by name is a one-line error. float32 and float64 only (the CSR and
stock paths take the others).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from prunelab.errors import PrunelabError

log = logging.getLogger(__name__)

DTYPES = (torch.float32, torch.float64)

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <vector>

template <typename T>
static inline void axpy4(T* __restrict y, const T* __restrict w0, const T* __restrict w1, const T* __restrict w2,
                         const T* __restrict w3, T a0, T a1, T a2, T a3, int64_t n) {
  for (int64_t j = 0; j < n; ++j) y[j] += a0 * w0[j] + a1 * w1[j] + a2 * w2[j] + a3 * w3[j];
}

template <typename T>
static inline void axpy1(T* __restrict y, const T* __restrict w, T a, int64_t n) {
  for (int64_t j = 0; j < n; ++j) y[j] += a * w[j];
}

// y += sum over the listed channels idx[0..m) of xv[c] * W^T[idx[c], col0 : col0 + n]
template <typename T>
static void accumulate(T* y, const T* wt, int64_t ldw, int64_t col0, int64_t n, const int64_t* idx, const T* xv,
                       int64_t m) {
  int64_t c = 0;
  for (; c + 4 <= m; c += 4) {
    axpy4(y, wt + idx[c] * ldw + col0, wt + idx[c + 1] * ldw + col0, wt + idx[c + 2] * ldw + col0,
          wt + idx[c + 3] * ldw + col0, xv[c], xv[c + 1], xv[c + 2], xv[c + 3], n);
  }
  for (; c < m; ++c) axpy1(y, wt + idx[c] * ldw + col0, xv[c], n);
}

template <typename T>
static void run(const T* x, const T* wt, const T* bias, T* y, int64_t rows, int64_t in, int64_t out, T t) {
  std::vector<int64_t> idx(rows * in);
  std::vector<T> xv(rows * in);
  std::vector<int64_t> kept(rows, 0);
  for (int64_t i = 0; i < rows; ++i) {
    const T* xi = x + i * in;
    int64_t m = 0;
    for (int64_t k = 0; k < in; ++k) {
      T v = xi[k];
      if ((v < 0 ? -v : v) > t) {
        idx[i * in + m] = k;
        xv[i * in + m] = v;
        ++m;
      }
    }
    kept[i] = m;
  }
  if (rows == 1) {
    const int64_t m = kept[0];
    const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), m / 32));
    if (parts == 1) {
      for (int64_t j = 0; j < out; ++j) y[j] = bias ? bias[j] : T(0);
      accumulate(y, wt, out, 0, out, idx.data(), xv.data(), m);
      return;
    }
    std::vector<T> partial(parts * out, T(0));
    const int64_t per = (m + parts - 1) / parts;
    at::parallel_for(0, parts, 1, [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p) {
        const int64_t lo = p * per, hi = std::min(m, lo + per);
        if (lo < hi) accumulate(partial.data() + p * out, wt, out, 0, out, idx.data() + lo, xv.data() + lo, hi - lo);
      }
    });
    for (int64_t j = 0; j < out; ++j) {
      T s = bias ? bias[j] : T(0);
      for (int64_t p = 0; p < parts; ++p) s += partial[p * out + j];
      y[j] = s;
    }
    return;
  }
  const int64_t tile = 128;
  const int64_t tiles = (out + tile - 1) / tile;
  at::parallel_for(0, tiles, 1, [&](int64_t b, int64_t e) {
    for (int64_t tt = b; tt < e; ++tt) {
      const int64_t col0 = tt * tile, n = std::min(tile, out - col0);
      for (int64_t i = 0; i < rows; ++i) {
        T* yi = y + i * out + col0;
        for (int64_t j = 0; j < n; ++j) yi[j] = bias ? bias[col0 + j] : T(0);
        accumulate(yi, wt, out, col0, n, idx.data() + i * in, xv.data() + i * in, kept[i]);
      }
    }
  });
}

torch::Tensor act_sparse_mm(torch::Tensor x, torch::Tensor wt, c10::optional<torch::Tensor> bias, double threshold) {
  TORCH_CHECK(x.dim() == 2 && wt.dim() == 2 && x.size(1) == wt.size(0), "act_sparse_mm: (n, in) x (in, out)");
  TORCH_CHECK(x.scalar_type() == wt.scalar_type(), "act_sparse_mm: x and W^T dtypes differ");
  TORCH_CHECK(x.device().is_cpu() && wt.device().is_cpu(), "act_sparse_mm: CPU tensors only");
  auto xc = x.contiguous();
  auto wc = wt.contiguous();
  torch::Tensor bc;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == wt.size(1) && bias->scalar_type() == x.scalar_type(), "act_sparse_mm: bias");
    bc = bias->contiguous();
  }
  auto y = torch::empty({x.size(0), wt.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "act_sparse_mm", [&] {
    run<scalar_t>(xc.data_ptr<scalar_t>(), wc.data_ptr<scalar_t>(), bc.defined() ? bc.data_ptr<scalar_t>() : nullptr,
                  y.data_ptr<scalar_t>(), x.size(0), x.size(1), wt.size(1), static_cast<scalar_t>(threshold));
  });
  return y;
}
"""

_state: dict[str, Any] = {}


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _build_dir(key: str) -> Path:
    root = Path(os.environ.get("PRUNELAB_CACHE", Path.home() / ".cache" / "prunelab"))
    path = root / "ext" / key
    path.mkdir(parents=True, exist_ok=True)
    return path


def load() -> Any | None:
    """The compiled module, built on first use (None, with `reason()` saying why, where it cannot be)."""
    if "module" in _state:
        return _state["module"]
    module = None
    if os.environ.get("PRUNELAB_NO_COMPILE"):
        _state["reason"] = "PRUNELAB_NO_COMPILE is set"
    else:
        key = hashlib.sha256(f"{_SOURCE}|{torch.__version__}|{_cpu_flags()}".encode()).hexdigest()[:16]
        try:
            from torch.utils.cpp_extension import load_inline

            log.info("building the fused activation-sparse kernel (once per machine; about a minute)")
            module = load_inline(
                name=f"prunelab_fused_{key}",
                cpp_sources=_SOURCE,
                functions=["act_sparse_mm"],
                extra_cflags=["-O3", "-march=native", "-fopenmp"],
                extra_ldflags=["-fopenmp"],
                build_directory=str(_build_dir(key)),
                verbose=False,
            )
        except Exception as e:  # any build failure means: use the stock kernels
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            _state["reason"] = f"the fused kernel could not be built ({first[:200]})"
            log.warning("%s; using the stock kernels", _state["reason"])
    _state["module"] = module
    return module


@contextlib.contextmanager
def switched_off(reason: str = "switched off") -> Iterator[None]:
    """Inside the block the kernel counts as not built (`reason()` says `reason`): an A/B against the stock kernels
    in one process, or a test of the fallback, without touching how it was built; what was there comes back after."""
    saved = _state.copy()
    _state.clear()
    _state.update(module=None, reason=reason)
    try:
        yield
    finally:
        _state.clear()
        _state.update(saved)


def available() -> bool:
    return load() is not None


def reason() -> str:
    load()
    return _state.get("reason", "")


def usable(dtype: torch.dtype) -> bool:
    """The kernel is built here (or can be) and takes this dtype: what "auto" asks before measuring it."""
    return dtype in DTYPES and available()


def require(dtype: torch.dtype | None = None, layer: str = "") -> Any:
    """The compiled module, or the one-line reason an explicit choice of "fused" cannot run (here, or on `dtype`)."""
    module = load()
    if module is None:
        raise PrunelabError(f"kernel 'fused' is not available here: {reason()}; use --sparse-kernels auto")
    if dtype is not None and dtype not in DTYPES:
        raise PrunelabError(
            f"kernel 'fused' takes float32/float64 weights and '{layer}' is {dtype}; use --sparse-kernels auto"
        )
    return module


def fused_kernel(x2: torch.Tensor, wt: torch.Tensor, bias: torch.Tensor | None, threshold: float) -> torch.Tensor:
    """(n, in) input, (in, out) W^T -> (n, out): the layer applied to the input thresholded at |x| > threshold."""
    return require().act_sparse_mm(x2, wt, bias, threshold)
