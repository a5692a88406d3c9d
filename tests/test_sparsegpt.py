"""SparseGPT numerics: the vectorised solve equals the reference column loop; reconstruction beats the others."""

from __future__ import annotations

import pytest
import torch

from prunelab import prune
from prunelab.calibration import Hessian, SquaredNorm, native_bf16_matmul
from prunelab.config import PruneConfig
from prunelab.pruning import METHODS
from prunelab.pruning.masks import UNSTRUCTURED, Pattern, count_to_prune, lowest
from prunelab.pruning.sparsegpt import SparseGPTOptions, _lower_inverse, inverse_cholesky, sparsegpt_prune


def reference_loop(w: torch.Tensor, h: torch.Tensor, sparsity: float, pattern: Pattern, bs: int) -> torch.Tensor:
    """A straightforward transcription of the published column-by-column algorithm."""
    w = w.clone()
    rows, cols = w.shape
    h = h.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    hinv, _ = inverse_cholesky(h, 0.01, 0)
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        count = i2 - i1
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        if pattern.is_nm:
            mask1 = torch.zeros_like(w1, dtype=torch.bool)
        else:
            tmp = w1**2 / torch.diag(hinv1).reshape(1, -1) ** 2
            k = count_to_prune(rows * i2, sparsity) - count_to_prune(rows * i1, sparsity)
            mask1 = lowest(tmp.reshape(-1), k).view_as(w1)
        for i in range(count):
            col = w1[:, i]
            d = hinv1[i, i]
            if pattern.is_nm and i % pattern.m == 0:
                tmp = w1[:, i : i + pattern.m] ** 2 / torch.diag(hinv1)[i : i + pattern.m].reshape(1, -1) ** 2
                mask1[:, i : i + pattern.m] = lowest(tmp, pattern.m - pattern.n)
            q = col.clone()
            q[mask1[:, i]] = 0
            q1[:, i] = q
            e = (col - q) / d
            w1[:, i:] -= e.unsqueeze(1).matmul(hinv1[i, i:].unsqueeze(0))
            err1[:, i] = e
        w[:, i1:i2] = q1
        w[:, i2:] -= err1.matmul(hinv[i1:i2, i2:])
    return w


def correlated_inputs(n: int, d: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d // 4, generator=gen)
    mix = torch.randn(d // 4, d, generator=gen)
    return base @ mix + 0.1 * torch.randn(n, d, generator=gen)


@pytest.mark.parametrize("pattern", [UNSTRUCTURED, Pattern(2, 4), Pattern(4, 8)])
def test_vectorised_equals_reference_loop(pattern: Pattern) -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(24, 80, generator=gen, dtype=torch.float64)
    x = correlated_inputs(500, 80).double()
    h = x.t() @ x / x.shape[0]
    ours = w.clone()
    mask, _ = sparsegpt_prune(ours, h, 0.5, pattern, SparseGPTOptions(blocksize=32))
    ours[mask] = 0
    ref = reference_loop(w, h, 0.5, pattern, 32)
    assert torch.equal(ours == 0, ref == 0)
    assert torch.allclose(ours, ref, atol=1e-9)


@pytest.mark.parametrize("pattern", [UNSTRUCTURED, Pattern(2, 4), Pattern(4, 8), Pattern(8, 16)])
def test_float32_default_blocks_equal_reference_loop(pattern: Pattern) -> None:
    """At the engine's settings (float32, blocks of 128, a partial last block, for 8:16 a partial last group, a
    dead input), the recursive solve keeps the reference loop's masks and its weights to float32 rounding."""
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(40, 296, generator=gen)
    x = correlated_inputs(1200, 296, seed=1)
    x[:, 7] = 0.0  # an input never active: H_77 = 0, its weights are zeroed
    h = x.t() @ x / x.shape[0]
    ours = w.clone()
    mask, _ = sparsegpt_prune(ours, h, 0.5, pattern, SparseGPTOptions())
    ours[mask] = 0
    ref = reference_loop(w, h, 0.5, pattern, 128)
    assert torch.equal(ours == 0, ref == 0)
    assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4), (ours - ref).abs().max()
    assert bool((ours[:, 7] == 0).all())


def test_lower_inverse_by_halves_equals_triangular_solve() -> None:
    gen = torch.Generator().manual_seed(0)
    n = 301  # odd sizes at every level of the recursion, leaves below 128
    lower = torch.tril(torch.randn(n, n, generator=gen, dtype=torch.float64)) + 4 * torch.eye(n, dtype=torch.float64)
    ref = torch.linalg.solve_triangular(lower, torch.eye(n, dtype=torch.float64), upper=False)
    ours = _lower_inverse(lower)
    assert torch.equal(ours, torch.tril(ours))
    assert torch.allclose(ours, ref, atol=1e-12)


def _reconstruction_error(method: str, w: torch.Tensor, x: torch.Tensor, pattern: str) -> float:
    cfg = PruneConfig(method=method, sparsity=0.5 if pattern == "unstructured" else None, pattern=pattern)
    pruner = METHODS[method](cfg)
    stat = Hessian(x.shape[1], x.device) if method == "sparsegpt" else SquaredNorm(x.shape[1], x.device)
    stat.add(x)
    w2 = w.clone()
    mask = pruner.prune_weight("test", w2, stat if method != "magnitude" else None, 0.5)
    w2[mask] = 0
    return float(torch.linalg.norm(x @ w.t() - x @ w2.t()))


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_reconstruction_order(pattern: str) -> None:
    """On a Linear with correlated inputs of uneven scale: sparsegpt < wanda < magnitude."""
    gen = torch.Generator().manual_seed(0)
    d = 128
    scale = torch.exp(torch.randn(d, generator=gen))  # some input features matter far more than others
    x = correlated_inputs(2000, d) * scale
    w = torch.randn(64, d, generator=gen)
    errs = {m: _reconstruction_error(m, w, x, pattern) for m in ("sparsegpt", "wanda", "magnitude")}
    assert errs["sparsegpt"] < errs["wanda"] < errs["magnitude"], errs


def test_dampening_raised_when_cholesky_fails(caplog) -> None:
    h = -torch.eye(8)  # negative definite: fails until dampening dominates... it never does, so it raises
    with pytest.raises(RuntimeError, match="not positive definite"):
        inverse_cholesky(h, 0.01, 2)
    # A singular (rank-deficient) Hessian with a tiny dampening needs retries but succeeds.
    x = torch.randn(3, 8)
    h = x.t() @ x
    h[0, 0] = 0.0  # mean diagonal still positive; matrix indefinite at first
    u, damp = inverse_cholesky(h - 1e-3 * torch.eye(8), 1e-6, 8)
    assert damp > 1e-6
    assert "retrying" in caplog.text
    assert torch.isfinite(u).all()


def test_hessian_blocked_equals_plain() -> None:
    x = torch.randn(300, 1100)
    stat = Hessian(1100, torch.device("cpu"))
    stat.add(x[:100])
    stat.add(x[100:])
    assert len(stat._edges) > 1
    assert torch.allclose(stat.matrix, x.t() @ x / 300, atol=1e-4)


def test_bfloat16_hessian_close_to_float32() -> None:
    """bfloat16 products into the float32 sum: a relative error near 1e-3 (ten times below the 1% dampening) and
    a pruned layer as good as with the float32 Hessian - but a real bfloat16 path, not float32 in disguise."""
    gen = torch.Generator().manual_seed(0)
    d = 640  # wider than 128: the blocked upper triangle, mirrored on read
    x = correlated_inputs(2048, d) * torch.exp(torch.randn(d, generator=gen))
    exact = x.double().t() @ x.double() / x.shape[0]
    w = torch.randn(64, d, generator=gen)
    err, recon = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        stat = Hessian(d, torch.device("cpu"), dtype)
        for chunk in x.split(256):
            stat.add(chunk)
        assert stat.matrix.dtype == torch.float32 and torch.equal(stat.matrix, stat.matrix.t())
        err[dtype] = float((stat.matrix.double() - exact).norm() / exact.norm())
        pruned = w.clone()
        mask, _ = sparsegpt_prune(pruned, stat.matrix, 0.5, UNSTRUCTURED, SparseGPTOptions())
        assert int(mask.sum()) == w.numel() // 2
        recon[dtype] = float(torch.linalg.norm(x @ (w - pruned).t()))
    assert 1e-4 < err[torch.bfloat16] < 5e-3 and err[torch.float32] < 1e-5, err
    assert recon[torch.bfloat16] <= 1.02 * recon[torch.float32], recon


def test_hessian_dtype_choice(model_factory, calib) -> None:
    cpu = torch.device("cpu")

    def pruner(choice: str):
        return METHODS["sparsegpt"](PruneConfig(method="sparsegpt", sparsity=0.5, options={"hessian_dtype": choice}))

    assert pruner("float32").hessian_dtype(cpu) == torch.float32
    assert pruner("bfloat16").hessian_dtype(cpu) == torch.bfloat16
    assert pruner("auto").hessian_dtype(torch.device("cuda")) == torch.float32  # never asks a GPU
    assert pruner("auto").hessian_dtype(cpu) == (torch.bfloat16 if native_bf16_matmul(cpu) else torch.float32)
    assert METHODS["wanda"](PruneConfig(method="wanda", sparsity=0.5)).hessian_dtype(cpu) == torch.float32
    cfg = PruneConfig(method="sparsegpt", sparsity=0.5, options={"hessian_dtype": "bfloat16"})
    assert prune(model_factory("llama"), cfg, calib=calib).extra["hessian_matmul"] == "bfloat16"
    cfg = PruneConfig(method="wanda", sparsity=0.5)
    assert "hessian_matmul" not in prune(model_factory("llama"), cfg, calib=calib).extra
    cfg = PruneConfig(method="sparsegpt", sparsity=0.5, stages=["dsnot"], options={"hessian_dtype": "bfloat16"})
    assert prune(model_factory("llama"), cfg, calib=calib).extra["hessian_matmul"] == "float32"  # Moments serves


def test_moments_stay_float32_for_dsnot() -> None:
    """SparseGPT + DSnoT share one Moments statistic: its products stay float32 (DSnoT's variance cancels)."""
    from prunelab.calibration import StatisticSet

    both = StatisticSet(["hessian", "moments"], 256, torch.device("cpu"), torch.bfloat16)
    assert both["hessian"] is both["moments"] and both["moments"].matmul_dtype == torch.float32
    assert StatisticSet(["hessian"], 256, torch.device("cpu"), torch.bfloat16)["hessian"].matmul_dtype == torch.bfloat16
