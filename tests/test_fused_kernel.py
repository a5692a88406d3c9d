"""The compiled activation-sparse kernel (`runtime.fused`): the same maths as the dense layer on the thresholded
input, on every path it has (one row split between threads or not, several rows in column tiles with a remainder),
and honest when it is absent or given a dtype it does not take."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.runtime import fused
from prunelab.runtime import kernels as K
from prunelab.runtime.sparse import ActivationSparseLinear, _Selection, apply_activation_sparsity
from prunelab.runtime.thresholds import calibrate_thresholds

from ._activation import calib_ids
from .conftest import make_model

needs_fused = pytest.mark.skipif(not fused.available(), reason=f"fused kernel not built: {fused.reason()}")


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@needs_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("keep", [0.05, 0.5, 1.0])
@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_equals_dense_on_thresholded_input(two_threads, dtype, rows, keep, with_bias) -> None:
    # in 300 / out 200: at keep 0.5 one row has ~150 kept channels (split between 2 threads, 4 rows per pass plus a
    # remainder), at 0.05 ~15 (one thread); several rows run tiles of 128 + 72 output columns
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(rows, 300, generator=gen, dtype=dtype)
    wt = torch.randn(300, 200, generator=gen, dtype=dtype)
    bias = torch.randn(200, generator=gen, dtype=dtype) if with_bias else None
    t = 0.0 if keep == 1.0 else float(x.abs().flatten().quantile(1 - keep))
    want = x.masked_fill(x.abs() <= t, 0.0) @ wt + (bias if bias is not None else 0)
    got = fused.fused_kernel(x, wt, bias, t)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    if keep < 1.0:
        assert not torch.allclose(x @ wt, want - (bias if bias is not None else 0), atol=1e-2)


@needs_fused
def test_fused_in_the_layer_skips_the_shared_selection_and_decodes_like_dense() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(64, 40, bias=True)
    x = torch.randn(2, 1, 64, generator=torch.Generator().manual_seed(1))
    t = float(x.abs().median())
    sel = _Selection(3)
    sparse = ActivationSparseLinear(layer, t, sel, kernels={8: "fused"}, beyond="fused")
    with torch.no_grad():
        got = sparse(x)
        torch.testing.assert_close(got, layer(x.masked_fill(x.abs() <= t, 0.0)), rtol=1e-5, atol=1e-5)
    assert sel.picked is None  # nothing was thresholded in Python


def test_explicit_fused_without_the_kernel_is_one_line() -> None:
    built, why = fused.available(), fused.reason()
    with fused.switched_off("PRUNELAB_NO_COMPILE is set"):
        assert not fused.available()
        _explicit_fused_without_the_kernel()
    assert (fused.available(), fused.reason()) == (built, why)  # what was built comes back


def _explicit_fused_without_the_kernel() -> None:
    model = make_model("llama")
    table = calibrate_thresholds(model, calib_ids())
    with pytest.raises(PrunelabError, match="kernel 'fused' is not available here: PRUNELAB_NO_COMPILE") as e:
        apply_activation_sparsity(model, table, 0.5, kernels="fused")
    assert "\n" not in str(e.value)
    assert not any(isinstance(m, ActivationSparseLinear) for m in model.modules())  # nothing swapped
    # auto measures the stock kernels only, and works
    times = K.measure_act_kernels([torch.randn(64, 32)], [None], 0.5, 1, [lambda x: x @ torch.randn(64, 32)])
    assert "fused" not in times and "index_select" in times


@needs_fused
def test_explicit_fused_refuses_half_precision() -> None:
    model = make_model("llama").to(torch.bfloat16)
    table = calibrate_thresholds(model.float(), calib_ids())
    model = model.to(torch.bfloat16)
    with pytest.raises(PrunelabError, match="takes float32/float64"):
        apply_activation_sparsity(model, table, 0.5, kernels="fused")
