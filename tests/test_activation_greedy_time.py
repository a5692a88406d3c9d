"""Time-aware greedy allocation (greedy-time): the kernel cost model, the walk against TEAL's on a hand-computed
case, calibration with injected costs, costs reused from a table, and the search's early stop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.runtime import calibrate_thresholds
from prunelab.runtime.costs import FORMAT, KernelCosts, measure_kernel_costs
from prunelab.runtime.thresholds import allocation_at, greedy_path, read_costs

from ._activation import TwoLayerModel, calib_ids
from .conftest import make_model

# Shape A (8 in, 4 out) saves 3 s per 0.25 of sparsity. Shape B (4 in, 8 out) is slower than dense at keep 0.75
# and saves 2 s at keep 0.5: raw savings 0, 2, whose concave envelope credits 1 per step.
# Shape C never beats dense: it saves nothing anywhere.
COSTS = KernelCosts(
    keeps=[0.5, 0.75],
    dense={"8x4": 10.0, "4x8": 10.0, "6x6": 10.0},
    sparse={"8x4": [4.0, 7.0], "4x8": [8.0, 11.0], "6x6": [12.0, 11.0]},
)


def test_cost_model_savings_hand_computed() -> None:
    assert COSTS.saved(8, 4, 0.25) == pytest.approx(3.0) and COSTS.saved(8, 4, 0.5) == pytest.approx(6.0)
    assert COSTS.saved(4, 8, 0.25) == pytest.approx(1.0)  # envelope: raw saving 0 there
    assert COSTS.saved(4, 8, 0.5) == pytest.approx(2.0) and COSTS.saved(4, 8, 0.9) == pytest.approx(2.0)  # flat
    assert COSTS.saved(6, 6, 0.5) == 0.0
    assert COSTS.group_saved([(8, 4), (4, 8)], 0.5) == pytest.approx(8.0)
    assert KernelCosts.from_dict(json.loads(json.dumps(COSTS.to_dict()))).to_dict() == COSTS.to_dict()
    with pytest.raises(PrunelabError, match="no shape 3x3"):
        COSTS.saved(3, 3, 0.5)


def _gain(shapes: list[tuple[int, int]]):
    return lambda g, lo, hi: COSTS.saved(*shapes[g], hi) - COSTS.saved(*shapes[g], lo)


def test_plain_and_time_aware_greedy_pick_differently_by_hand() -> None:
    # Group 0 (shape A) costs 3 s^2 of error, group 1 (shape B) 2 s^2; both gate 32 weights.
    # Per skipped weight group 1 is cheaper (0.125 < 0.1875 for the first step): TEAL raises it first.
    # Per second saved group 0 is cheaper (0.1875 / 3 = 0.0625 < 0.125 / 1): greedy-time raises it first.
    # Step 2: TEAL 0.1875 vs 0.375 -> group 0; time 0.5625 / 3 = 0.1875 vs 0.125 -> group 1.
    # Step 3: TEAL 0.5625 vs 0.375 -> group 1; time 0.1875 vs 0.375 -> group 0.
    sizes = [32, 32]

    def err(a: list[float]) -> float:
        return 3 * a[0] ** 2 + 2 * a[1] ** 2

    plain = greedy_path(sizes, err, step=0.25, cap=0.5)
    timed = greedy_path(sizes, err, step=0.25, cap=0.5, gain=_gain([(8, 4), (4, 8)]))
    assert plain == [[0.0, 0.0], [0.0, 0.25], [0.25, 0.25], [0.25, 0.5], [0.5, 0.5]]
    assert timed == [[0.0, 0.0], [0.25, 0.0], [0.25, 0.25], [0.5, 0.25], [0.5, 0.5]]
    assert allocation_at(plain, sizes, 0.125) == [0.0, 0.25] and allocation_at(timed, sizes, 0.125) == [0.25, 0.0]
    assert allocation_at(plain, sizes, 0.375) == [0.25, 0.5] and allocation_at(timed, sizes, 0.375) == [0.5, 0.25]


def test_a_shape_that_never_saves_is_raised_last_and_stop_ends_the_walk() -> None:
    # Group 1 (shape C) costs almost no error but saves no time: it waits until group 0 is at the cap.
    path = greedy_path([1, 1], lambda a: a[0] + 1e-3 * a[1], 0.25, 0.5, gain=_gain([(8, 4), (6, 6)]))
    assert path == [[0.0, 0.0], [0.25, 0.0], [0.5, 0.0], [0.5, 0.25], [0.5, 0.5]]
    # Stopping at mean 0.25 keeps the path up to the first allocation whose mean reaches it.
    assert greedy_path([1, 1], lambda a: a[0] + 1e-3 * a[1], 0.25, 0.5, stop=0.25) == [
        [0.0, 0.0], [0.0, 0.25], [0.0, 0.5]
    ]  # fmt: skip


def _pair_costs(a_saves: float, b_saves: float) -> KernelCosts:
    """Linear savings: at sparsity s, layer a saves a_saves * s seconds, layer b b_saves * s."""
    keeps = [round(0.05 * i, 2) for i in range(1, 20)]
    return KernelCosts(
        keeps, {"16x16": 1.0, "16x32": 1.0},
        {"16x16": [1.0 - a_saves * (1 - k) for k in keeps], "16x32": [1.0 - b_saves * (1 - k) for k in keeps]},
    )  # fmt: skip


def test_calibration_with_injected_costs_moves_sparsity_to_where_it_saves_time() -> None:
    model, calib = TwoLayerModel(16, widen=2), calib_ids()  # layers a 16x16, b 16x32
    greedy = calibrate_thresholds(model, calib, allocation="greedy", greedy_step=0.05)
    fast_a = calibrate_thresholds(model, calib, allocation="greedy-time", greedy_step=0.05, costs=_pair_costs(0.9, 0.0))
    fast_b = calibrate_thresholds(model, calib, allocation="greedy-time", greedy_step=0.05, costs=_pair_costs(0.0, 0.9))
    assert fast_a.allocation == "greedy-time" and fast_a.calibration["kernel_costs"]["format"] == FORMAT
    assert "kernel_costs" not in greedy.calibration
    for level in fast_a.levels:
        for table in (fast_a, fast_b):
            assert table.average(level) == pytest.approx(level, abs=1e-9)  # the level keeps its meaning
    g, ta, tb = (t.sparsity_at(0.3) for t in (greedy, fast_a, fast_b))
    a, b = "model.layers.0.a", "model.layers.0.b"
    assert ta[a] > g[a] and tb[b] > g[b]
    assert ta[b] == 0.0 and tb[a] == 0.0  # the other layer saves nothing: it waits (0.3 is reachable without it)
    # Same costs, same allocation: the search is deterministic.
    again = calibrate_thresholds(model, calib, allocation="greedy-time", greedy_step=0.05, costs=_pair_costs(0.9, 0.0))
    assert again.sparsity == fast_a.sparsity and again.thresholds == fast_a.thresholds


def test_measured_costs_cover_every_shape_and_are_reused_from_a_table(tmp_path: Path) -> None:
    model = make_model("llama")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and "layers" in n}
    costs = measure_kernel_costs(layers, keeps=(0.25, 0.5, 0.75), repeats=1)
    assert set(costs.dense) == {"64x64", "64x32", "64x96", "96x64"}  # q/o, k/v, gate/up, down
    assert all(len(v) == 3 for v in costs.sparse.values()) and costs.threads == torch.get_num_threads()
    table = calibrate_thresholds(model, calib_ids(), allocation="greedy-time", greedy_step=0.1, costs=costs)
    table.save(tmp_path)
    assert read_costs(tmp_path).to_dict() == costs.to_dict()
    (tmp_path / "c.json").write_text(json.dumps(costs.to_dict()))
    assert read_costs(tmp_path / "c.json").to_dict() == costs.to_dict()
    plain = calibrate_thresholds(model, calib_ids(), allocation="greedy", greedy_step=0.1)
    plain.save(tmp_path / "plain")
    with pytest.raises(PrunelabError, match="records no kernel costs"):
        read_costs(tmp_path / "plain")
    with pytest.raises(PrunelabError, match="cannot read"):
        read_costs(tmp_path / "missing")


def test_greedy_search_stops_at_the_highest_level_with_the_same_allocation() -> None:
    model, calib = make_model("llama"), calib_ids()
    full = calibrate_thresholds(model, calib, allocation="greedy", greedy_step=0.1)
    low = calibrate_thresholds(model, calib, allocation="greedy", greedy_step=0.1, levels=[0.0, 0.2, 0.4])
    for level in low.levels:  # the walk is the same up to where it stopped
        assert low.sparsity_at(level) == pytest.approx(full.sparsity_at(level), abs=1e-12)


def test_lazy_search_walks_the_same_path_on_additive_errors_with_fewer_evaluations() -> None:
    weights = [5.0, 1.0, 3.0, 2.0]
    sizes = [4, 1, 2, 3]

    def counting(calls: list[int]):
        def err(a: list[float]) -> float:  # adds up over inputs and grows faster than linearly
            calls.append(1)
            return sum(w * s**2 + 0.1 * w * s**3 for w, s in zip(weights, a, strict=True))

        return err

    full_calls: list[int] = []
    lazy_calls: list[int] = []
    full = greedy_path(sizes, counting(full_calls), 0.1, 0.9)
    lazy = greedy_path(sizes, counting(lazy_calls), 0.1, 0.9, lazy=True)
    assert lazy == full and len(full) == 4 * 9 + 1
    assert len(lazy_calls) < 0.6 * len(full_calls)  # about 2 per raise instead of one per open group
    seconds = [1.0, 0.7, 2.0, 0.3]  # error weight / seconds all distinct: no exact ties

    def gain(g: int, lo: float, hi: float) -> float:
        return (hi - lo) * seconds[g]

    timed = greedy_path(sizes, counting([]), 0.1, 0.9, gain=gain)
    assert greedy_path(sizes, counting([]), 0.1, 0.9, gain=gain, lazy=True) == timed != full
