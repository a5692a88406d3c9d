"""AlphaPruning: the power-law estimator recovers a known exponent, the mapping keeps the target exactly and puts
less sparsity on heavier tails, and `--allocation alpha` prunes without calibration."""

from __future__ import annotations

import pytest
import torch

from prunelab import PruneConfig, prune
from prunelab.models import prunable_layers, weight_2d
from prunelab.pruning.allocation import alpha_allocation
from prunelab.pruning.esd import power_law_alpha, weight_alpha


def pareto_eigs(alpha: float, n: int = 400, xmin: float = 1.0) -> torch.Tensor:
    """Deterministic quantiles of p(x) ~ x^-alpha on [xmin, inf): the exponent any correct fit must return."""
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return xmin * (1 - q) ** (-1 / (alpha - 1))


def matrix_with_eigs(eigs: torch.Tensor, rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """W (rows, cols) = U diag(sqrt(eigs)) V^T, so W^T W has exactly these nonzero eigenvalues."""
    gen = torch.Generator().manual_seed(seed)
    n = eigs.numel()
    u, _ = torch.linalg.qr(torch.randn(rows, n, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, n, generator=gen, dtype=torch.float64))
    return (u * eigs.sqrt()) @ v.T


@pytest.mark.parametrize("alpha", [2.5, 3.0, 4.0])
def test_estimator_recovers_a_known_exponent(alpha: float) -> None:
    eigs = pareto_eigs(alpha)
    assert power_law_alpha(eigs) == pytest.approx(alpha, abs=0.1)
    # through a weight matrix: the spectrum is of W^T W (squared singular values), not of W
    w = matrix_with_eigs(eigs, rows=600, cols=400).float()
    assert weight_alpha(w) == pytest.approx(alpha, abs=0.1)
    # a wrong estimator (fitting singular values instead of eigenvalues) gives 1 + 2 (alpha - 1), far off
    sv = torch.linalg.svdvals(w.double()).flip(0)
    assert power_law_alpha(sv) == pytest.approx(1 + 2 * (alpha - 1), abs=0.2)


def test_estimator_finds_the_tail_above_a_bulk() -> None:
    # a flat bulk below xmin = 1 and a power-law tail alpha = 3 above: xmin must be searched, not taken at the minimum
    bulk = torch.linspace(0.2, 0.9, 200, dtype=torch.float64)
    eigs = torch.cat([bulk, pareto_eigs(3.0, 200)])
    assert power_law_alpha(eigs) == pytest.approx(3.0, abs=0.3)
    assert abs(1 + eigs.numel() / (eigs / eigs[0]).log().sum().item() - 3.0) > 0.5  # Hill over everything: wrong


def test_mapping_hand_computed() -> None:
    # alphas 2, 3, 6 -> scores -2, -3, -6 -> normalised to [0, 2 * 0.2 * 0.5] = 0.2, 0.15, 0 around mean 0.1167:
    # deviations 0.0833, 0.0333, -0.1167 > spread 0.1 -> scaled by 0.1 / 0.1167 -> sparsities 0.4286, 0.4714, 0.6
    s = alpha_allocation([2.0, 3.0, 6.0], [10, 10, 10], target=0.5, eps=0.2)
    assert s == pytest.approx([0.5 - 0.0833333 * 6 / 7, 0.5 - 0.0333333 * 6 / 7, 0.6], abs=1e-6)


def test_mapping_keeps_the_mean_bounds_and_order() -> None:
    gen = torch.Generator().manual_seed(0)
    alphas = (2 + 4 * torch.rand(30, generator=gen)).tolist()
    sizes = [int(x) for x in torch.randint(100, 1000, (30,), generator=gen)]
    for target, eps in [(0.6, 0.2), (0.7, 0.3), (0.8, 0.2)]:
        s = alpha_allocation(alphas, sizes, target, eps)
        assert sum(a * b for a, b in zip(s, sizes, strict=True)) / sum(sizes) == pytest.approx(target, abs=1e-12)
        assert all(target * (1 - eps) - 1e-12 <= x <= target * (1 + eps) + 1e-12 for x in s)
        assert all(0 < x < 1 for x in s)
        order = sorted(range(30), key=lambda i: alphas[i])
        assert [s[i] for i in order] == sorted(s)  # heavier tail (smaller alpha) -> lower sparsity


def test_alpha_prune_without_calibration(model_factory) -> None:
    model = model_factory("llama")
    with torch.no_grad():  # give block 1 heavy-tailed spectra: it must be pruned less
        for name, mod in prunable_layers(model).items():
            if name.startswith("model.layers.1."):
                w = weight_2d(mod)
                n = min(w.shape)
                w.copy_(matrix_with_eigs(pareto_eigs(1.8, n), *w.shape).float() * w.abs().mean() * 3)
    cfg = PruneConfig(method="wanda", sparsity=0.6, allocation="alpha")
    result = prune(model, PruneConfig(method="magnitude", sparsity=0.6, allocation="alpha"))  # no calib needed
    record = result.extra["allocation"]
    assert record["scheme"] == "alpha" and record["alpha_eps"] == 0.2
    assert record["block_alpha"][1] < record["block_alpha"][0]
    block = record["block_sparsity"]
    assert block[1] < 0.6 < block[0] and sum(block) / 2 == pytest.approx(0.6, abs=1e-9)
    assert result.achieved_sparsity == pytest.approx(0.6, abs=0.01)
    for name, layer in result.layers.items():
        assert layer.target_sparsity == block[int(name.split(".")[2])]
    assert cfg.identity()["allocation"] == "alpha" and "alpha_eps" not in cfg.identity()  # default: id kept


def test_alpha_keeps_nm_uniform(model_factory, calib) -> None:
    result = prune(model_factory("llama"), PruneConfig(method="wanda", pattern="2:4", allocation="alpha"), calib=calib)
    assert result.extra["allocation"]["block_sparsity"] == [0.5, 0.5]
    assert any("N:M" in note for note in result.notes)


def test_alpha_with_a_block_the_filter_empties(model_factory) -> None:
    cfg = PruneConfig(method="magnitude", sparsity=0.6, allocation="alpha", targets=[r"re:layers\.0\."])
    result = prune(model_factory("llama"), cfg)
    block = result.extra["allocation"]["block_sparsity"]
    assert block[0] == pytest.approx(0.6) and all(x == x for x in result.extra["allocation"]["block_alpha"])
    assert result.achieved_sparsity == pytest.approx(0.6, abs=0.01)
