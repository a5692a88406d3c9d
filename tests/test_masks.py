"""Hand-computed masks, chosen so that a wrong formula or comparison group gives a different answer."""

from __future__ import annotations

import itertools

import pytest
import torch

from prunelab.calibration import SquaredNorm
from prunelab.config import PruneConfig
from prunelab.errors import PrunelabError
from prunelab.pruning import Wanda
from prunelab.pruning.magnitude import Magnitude
from prunelab.pruning.masks import (
    Pattern,
    count_to_prune,
    is_valid_nm,
    lowest,
    nm_mask,
    parse_pattern,
    per_layer_mask,
    per_row_mask,
)


def test_per_row_differs_from_per_layer() -> None:
    # Row 0 holds all the small values: per-layer ranking empties it, per-row ranking takes 2 from each row.
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]])
    assert per_row_mask(scores, 0.5).tolist() == [[True, True, False, False], [True, True, False, False]]
    assert per_layer_mask(scores, 0.5).tolist() == [[True, True, True, True], [False, False, False, False]]


def test_ties_prune_lower_index_first() -> None:
    scores = torch.tensor([[5.0, 1.0, 1.0, 1.0]])
    assert lowest(scores, 2).tolist() == [[False, True, True, False]]


def test_nm_groups_do_not_leak_across_edges() -> None:
    # Group 1 = [0.1, 0.2, 9, 9], group 2 = [5, 6, 7, 8]: a row-wide ranking would prune 0.1, 0.2, 5, 6 too,
    # but a 1:4 mask must keep exactly one weight per group (the largest).
    scores = torch.tensor([[0.1, 0.2, 9.0, 9.5, 5.0, 6.0, 7.0, 8.0]])
    mask = nm_mask(scores, Pattern(1, 4))
    assert mask.tolist() == [[True, True, True, False, True, True, True, False]]
    two_four = nm_mask(scores, Pattern(2, 4))
    assert two_four.tolist() == [[True, True, False, False, True, True, False, False]]


def test_nm_needs_divisible_width() -> None:
    with pytest.raises(PrunelabError, match="multiple of 4"):
        nm_mask(torch.ones(2, 6), Pattern(2, 4))


def test_is_valid_nm() -> None:
    w = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0, 4.0]])
    assert is_valid_nm(w, Pattern(2, 4))
    assert not is_valid_nm(w, Pattern(1, 4))


@pytest.mark.parametrize("text", ["2-4", "4:2", "0:4", "a:b", "2:4:8", ""])
def test_parse_pattern_rejects(text: str) -> None:
    with pytest.raises(PrunelabError):
        parse_pattern(text)


def test_parse_pattern_accepts() -> None:
    assert parse_pattern("2:4") == Pattern(2, 4)
    assert parse_pattern("unstructured").is_nm is False
    assert Pattern(1, 4).sparsity == 0.75


def test_count_rounding() -> None:
    assert count_to_prune(10, 0.25) == 3  # 2.5 rounds up
    assert count_to_prune(10, 0.24) == 2
    assert count_to_prune(7, 0.5) == 4


def test_wanda_uses_norm_not_squared_norm() -> None:
    # |W| = [[1, 3]], column norms ||x|| = [2, 1] (sum of squares [4, 1]).
    # Wanda: 1*2 = 2 < 3*1 = 3 -> prune column 0. With squared norms: 4 > 3 -> would prune column 1.
    # Plain magnitude would also prune column 0, so add a second row that separates Wanda from magnitude.
    w = torch.tensor([[1.0, 3.0], [2.5, 3.0]])
    stat = SquaredNorm(2, torch.device("cpu"))
    stat.add(torch.tensor([[2.0, 1.0]]))  # sum x^2 = [4, 1] -> norm [2, 1]
    mask = Wanda(PruneConfig(method="wanda", sparsity=0.5)).prune_weight("layer", w.clone(), stat, 0.5)
    # Row 1: wanda scores [5, 3] -> prune column 1; magnitude would prune column 0 (2.5 < 3).
    assert mask.tolist() == [[True, False], [False, True]]


def test_wanda_compares_within_rows() -> None:
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0], [100.0, 200.0, 300.0, 400.0]])
    stat = SquaredNorm(4, torch.device("cpu"))
    stat.add(torch.ones(1, 4))
    mask = Wanda(PruneConfig(method="wanda", sparsity=0.5)).prune_weight("layer", w.clone(), stat, 0.5)
    assert mask.sum(dim=1).tolist() == [2, 2]


def test_magnitude_compares_within_layer() -> None:
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0], [100.0, 200.0, 300.0, 400.0]])
    mask = Magnitude(PruneConfig(method="magnitude", sparsity=0.5)).prune_weight("layer", w.clone(), None, 0.5)
    assert mask.sum(dim=1).tolist() == [4, 0]


@pytest.mark.parametrize("shape", [(300,), (7, 50), (3, 4, 40), (5, 4)])
def test_lowest_equals_a_stable_sort_with_ties(shape: tuple[int, ...]) -> None:
    """The selection paths (numpy's on a CPU for long rows, torch.kthvalue for small groups) keep the exact
    count and the lower-index-first tie rule of a stable sort, in float32 and float64."""
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        tied = torch.randint(0, 6, shape, generator=gen).to(dtype)  # many ties at every threshold
        distinct = torch.rand(shape, generator=gen).to(dtype)
        for scores, k in itertools.product((tied, distinct), (1, shape[-1] // 3, shape[-1] - 1)):
            order = scores.argsort(dim=-1, stable=True)
            want = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, order[..., :k], True)
            assert torch.equal(lowest(scores, k), want), (dtype, k)
