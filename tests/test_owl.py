"""OWL allocation: exact global target, bounded by lambda, more outliers -> less sparsity."""

from __future__ import annotations

import pytest
import torch

from prunelab import PruneConfig, prune
from prunelab.errors import PrunelabError
from prunelab.models import prunable_layers, weight_2d
from prunelab.pruning.allocation import owl_allocation


def test_allocation_hand_computed() -> None:
    # ratios 0, 1, 3 -> normalised to [0, 2*0.1] = 0, 0.0667, 0.2; mean 0.0889; deviations -0.0889, -0.0222, 0.1111
    # 0.1111 > lambda = 0.1 -> all deviations scaled by 0.1 / 0.1111 = 0.9.
    s = owl_allocation([0.0, 1.0, 3.0], [10, 10, 10], target=0.5, lam=0.1)
    assert s == pytest.approx([0.58, 0.52, 0.40], abs=1e-9)
    assert sum(s) / 3 == pytest.approx(0.5, abs=1e-12)


def test_allocation_weighted_mean_is_target_and_bounded() -> None:
    gen = torch.Generator().manual_seed(0)
    ratios = torch.rand(12, generator=gen).tolist()
    sizes = [int(x) for x in torch.randint(100, 1000, (12,), generator=gen)]
    s = owl_allocation(ratios, sizes, target=0.7, lam=0.08)
    assert sum(a * b for a, b in zip(s, sizes, strict=True)) / sum(sizes) == pytest.approx(0.7, abs=1e-12)
    assert max(abs(x - 0.7) for x in s) <= 0.08 + 1e-12
    # Monotone: the block with the most outliers gets the least sparsity.
    assert s[ratios.index(max(ratios))] == min(s)


def test_allocation_rejects_out_of_range() -> None:
    with pytest.raises(PrunelabError, match="lambda"):
        owl_allocation([0.1, 0.2], [1, 1], target=0.95, lam=0.08)
    assert owl_allocation([0.3, 0.3], [1, 1], target=0.5, lam=0.1) == [0.5, 0.5]


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_owl_prune_hits_target(method: str, model_factory, calib) -> None:
    model = model_factory("llama")
    with torch.no_grad():  # plant outliers in block 1 so OWL must spare it
        w = weight_2d(prunable_layers(model)["model.layers.1.mlp.down_proj"])
        w[:, :3] *= 40
    cfg = PruneConfig(method=method, sparsity=0.6, allocation="owl", owl_lambda=0.1)
    result = prune(model, cfg, calib=calib)
    block = result.extra["allocation"]["block_sparsity"]
    assert block[1] < 0.6 < block[0]
    assert sum(block) / 2 == pytest.approx(0.6, abs=1e-9)
    assert result.achieved_sparsity == pytest.approx(0.6, abs=0.01)
    for name, layer in result.layers.items():
        assert layer.target_sparsity == block[int(name.split(".")[2])]


def test_owl_keeps_nm_uniform(model_factory, calib) -> None:
    result = prune(model_factory("llama"), PruneConfig(method="wanda", pattern="2:4", allocation="owl"), calib=calib)
    assert result.extra["allocation"]["block_sparsity"] == [0.5, 0.5]
    assert any("N:M" in note for note in result.notes)
