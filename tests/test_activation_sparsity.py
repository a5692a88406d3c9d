"""Activation sparsity: calibrated thresholds, the sparse Linear against its definition, apply/remove, the table."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from prunelab.errors import PrunelabError
from prunelab.models import prunable_layers
from prunelab.runtime import (
    TABLE_FILE,
    ActivationSparseLinear,
    ThresholdTable,
    apply_activation_sparsity,
    calibrate_thresholds,
    find_table,
    write_calibrated_folder,
)
from prunelab.runtime import kernels as K
from prunelab.runtime.kernels import ACT_KERNELS
from prunelab.runtime.sparse import _Selection
from prunelab.runtime.thresholds import AbsHistogram, allocation_at, greedy_path

from ._activation import TwoLayerModel, calib_ids
from .conftest import make_model


def _inputs_of(model: nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every prunable layer's input on `ids` (dense model), flattened to (tokens, in)."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_pre_hook(lambda _m, a, n=n: seen.__setitem__(n, a[0].reshape(-1, a[0].shape[-1]).clone()))
        for n, m in prunable_layers(model).items()
    ]
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return seen


# ---------------------------------------------------------------- thresholds


def test_histogram_threshold_hand_computed() -> None:
    h = AbsHistogram(4, torch.device("cpu"))
    h.add(torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, -2.0, 4.0, -8.0]]))  # half exact zeros
    assert h.threshold(0.0) == 0.0 and h.threshold(0.4) == 0.0 and h.threshold(0.5) == 0.0
    # 5 of 8 entries at or below t means t in [1, 2); 7 of 8 means t in [4, 8) (a wrong rank gives another octave).
    assert 1.0 <= h.threshold(0.625) < 2.0
    assert 4.0 <= h.threshold(0.875) < 8.0


@pytest.mark.parametrize("dist", ["normal", "laplace", "lognormal_with_zeros"])
def test_histogram_quantiles_within_one_percent(dist: str) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 64, generator=gen)
    if dist == "laplace":
        x = torch.sign(x) * -torch.log(torch.rand(4000, 64, generator=gen))
    elif dist == "lognormal_with_zeros":
        x = torch.exp(3 * x)
        x[:, :8] = 0.0  # 12.5% exact zeros
    h = AbsHistogram(64, torch.device("cpu"))
    for chunk in x.split(500):  # accumulated over batches, as calibration does
        h.add(chunk)
    for s in (0.05, 0.25, 0.5, 0.75, 0.9):
        achieved = float((x.abs() <= h.threshold(s)).float().mean())
        assert abs(achieved - max(s, 0.125 if dist == "lognormal_with_zeros" else 0.0)) <= 0.01, (s, achieved)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_thresholds_reach_requested_sparsity_on_calibration_data(arch: str) -> None:
    model, calib = make_model(arch), calib_ids()
    table = calibrate_thresholds(model, calib)
    inputs = _inputs_of(model, calib)
    for level in (0.25, 0.5, 0.9):
        cuts = table.thresholds_at(level)
        for group in table.groups:
            x = inputs[group.name]
            achieved = float((x.abs() <= cuts[group.name]).float().mean())
            assert abs(achieved - level) <= 0.01, (group.name, level, achieved)
            for layer in group.layers:  # readers of one tensor share it
                assert torch.equal(inputs[layer], x) and cuts[layer] == cuts[group.name]


def test_groups_share_inputs_and_lm_head_is_never_targeted() -> None:
    table = calibrate_thresholds(make_model("llama"), calib_ids())
    first = [g.layers for g in table.groups if g.block == 0]
    assert first == [
        ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"],
        ["model.layers.0.self_attn.o_proj"],
        ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"],
        ["model.layers.0.mlp.down_proj"],
    ]
    assert all("lm_head" not in layer for g in table.groups for layer in g.layers)
    excluded = calibrate_thresholds(make_model("llama"), calib_ids(), exclude=[r"re:layers\.0\."])
    assert {g.block for g in excluded.groups} == {1} and excluded.excluded == [r"re:layers\.0\."]


# ---------------------------------------------------------------- allocation


def test_greedy_path_hand_computed() -> None:
    # Two groups, error = 10 * s0^2 + s1^2 with equal sizes: the cheap group 1 is raised first, and the path
    # average is interpolated exactly onto the level.
    path = greedy_path([1, 1], lambda a: 10 * a[0] ** 2 + a[1] ** 2, step=0.25, cap=0.5)
    assert path[:3] == [[0.0, 0.0], [0.0, 0.25], [0.0, 0.5]]
    assert path[-1] == [0.5, 0.5]
    assert allocation_at(path, [1, 1], 0.125) == [0.0, 0.25]
    assert allocation_at(path, [1, 1], 0.3) == pytest.approx([0.1, 0.5])


def test_greedy_average_equals_level_in_every_block() -> None:
    table = calibrate_thresholds(make_model("llama"), calib_ids(), allocation="greedy", greedy_step=0.1)
    assert table.levels[-1] == 0.9
    for level in table.levels:
        assert table.average(level) == pytest.approx(level, abs=1e-9)
        values = table._at(table.sparsity, level)
        for block in (0, 1):  # each block averages the level, hence the model does
            mine = [(g.params, s) for g, s in zip(table.groups, values, strict=True) if g.block == block]
            assert sum(p * s for p, s in mine) / sum(p for p, _ in mine) == pytest.approx(level, abs=1e-9)
    assert len({round(s, 6) for s in table.sparsity_at(0.5).values()}) > 1  # not uniform in disguise


def test_greedy_puts_less_sparsity_on_the_more_sensitive_layer() -> None:
    model = TwoLayerModel(32)  # layers a and b both 32x32
    with torch.no_grad():
        model.model.layers[0].b.weight.copy_(model.model.layers[0].a.weight)
        model.model.layers[0].a.weight.mul_(10.0)  # a's dropped inputs cost 100x more block output error
    table = calibrate_thresholds(model, calib_ids(), allocation="greedy", greedy_step=0.05)
    at = table.sparsity_at(0.5)
    a, b = at["model.layers.0.a"], at["model.layers.0.b"]
    assert a < 0.5 < b and (a + b) / 2 == pytest.approx(0.5)
    assert calibrate_thresholds(model, calib_ids()).sparsity_at(0.5)["model.layers.0.a"] == 0.5


# ---------------------------------------------------------------- the sparse Linear


def _layer(kind: str, in_f: int = 48, out_f: int = 40) -> nn.Module:
    torch.manual_seed(0)
    if kind == "conv1d":
        layer = Conv1D(out_f, in_f)
        nn.init.normal_(layer.weight)
        nn.init.normal_(layer.bias)
        return layer
    return nn.Linear(in_f, out_f, bias=kind == "linear_bias")


@pytest.mark.parametrize("kind", ["linear", "linear_bias", "conv1d"])
@pytest.mark.parametrize("kernel", ACT_KERNELS)
@pytest.mark.parametrize("batch", [1, 3])
def test_sparse_linear_equals_dense_on_thresholded_input(kind: str, kernel: str, batch: int) -> None:
    layer = _layer(kind)
    x = torch.randn(batch, 1, 48, generator=torch.Generator().manual_seed(2))
    t = float(x.abs().median())
    sparse = ActivationSparseLinear(layer, t, _Selection(1), kernels={1: kernel, 8: kernel}, beyond=kernel)
    with torch.no_grad():
        want = layer(x.masked_fill(x.abs() <= t, 0.0))
        got = sparse(x)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(layer(x), want, atol=1e-3)  # the threshold really changed the output


@pytest.mark.parametrize("kind", ["linear_bias", "conv1d"])
def test_prefill_is_dense_or_thresholded(kind: str) -> None:
    layer = _layer(kind)
    x = torch.randn(2, 5, 48, generator=torch.Generator().manual_seed(3))
    t = float(x.abs().median())
    with torch.no_grad():
        dense = ActivationSparseLinear(layer, t, _Selection(1), "dense", {1: "index_select"}, "index_select")
        assert torch.equal(dense(x), layer(x))
        thr = ActivationSparseLinear(layer, t, _Selection(1), "threshold", {1: "embedding_bag"}, "embedding_bag")
        torch.testing.assert_close(thr(x), layer(x.masked_fill(x.abs() <= t, 0.0)), rtol=1e-5, atol=1e-5)


def _table(arch: str = "llama") -> tuple[nn.Module, ThresholdTable]:
    model = make_model(arch)
    return model, calibrate_thresholds(model, calib_ids())


def _scores(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=4,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=0,
    )
    return out.sequences, torch.stack(out.scores)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("batch", [1, 2])
def test_every_kernel_decodes_like_the_thresholded_dense_model(arch: str, batch: int) -> None:
    model, table = _table(arch)
    ids = calib_ids(batch, 6, seed=5)
    with torch.no_grad():
        _, dense = _scores(model, ids)
        with apply_activation_sparsity(model, table, 0.5, kernels="off"):
            _, reference = _scores(model, ids)
        assert not torch.allclose(reference, dense, atol=1e-3)  # level 0.5 changes decode steps
        for kernel in ACT_KERNELS:
            with apply_activation_sparsity(model, table, 0.5, kernels=kernel):
                _, got = _scores(model, ids)
            torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-4)


def test_level_zero_gives_the_dense_logits_exactly() -> None:
    model, table = _table()
    ids = calib_ids(2, 8, seed=6)
    with torch.no_grad():
        seq, scores = _scores(model, ids)
        logits = model(input_ids=ids).logits
        for prefill in ("dense", "threshold"):
            with apply_activation_sparsity(model, table, 0.0, kernels="index_select", prefill=prefill):
                seq0, scores0 = _scores(model, ids)
                assert torch.equal(model(input_ids=ids).logits, logits)
            assert torch.equal(seq0, seq) and torch.equal(scores0, scores)


def test_prefill_threshold_mode_changes_full_sequence_logits() -> None:
    model, table = _table()
    ids = calib_ids(1, 16, seed=7)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        with apply_activation_sparsity(model, table, 0.5, prefill="dense", kernels="off"):
            assert torch.equal(model(input_ids=ids).logits, logits)
        with apply_activation_sparsity(model, table, 0.5, prefill="threshold", kernels="off"):
            assert not torch.allclose(model(input_ids=ids).logits, logits, atol=1e-3)


def test_remove_restores_the_model_bit_for_bit() -> None:
    model, table = _table()
    modules = dict(model.named_modules())
    params = {n: (p, p.detach().clone()) for n, p in model.named_parameters()}
    keys = list(model.state_dict())
    ids = calib_ids(1, 8, seed=8)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        handle = apply_activation_sparsity(model, table, 0.6, kernels="auto", measure_repeats=1)
        assert isinstance(model.model.layers[0].self_attn.q_proj, ActivationSparseLinear)
        assert list(model.state_dict()) == keys  # same keys while applied (weights registered, W^T not saved)
        assert handle.info["kernels_by_shape"] and handle.info["activation_sparsity"] == 0.6
        model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
        handle.remove()
        handle.remove()  # idempotent
        assert all(m is modules[n] for n, m in model.named_modules())
        assert set(dict(model.named_modules())) == set(modules)
        for n, p in model.named_parameters():
            assert p is params[n][0] and torch.equal(p, params[n][1])
        assert torch.equal(model(input_ids=ids).logits, logits)


def test_table_save_load_round_trip_and_plain_transformers_folder(tmp_path: Path, tokenizer) -> None:
    model = make_model("llama")
    table = calibrate_thresholds(model, calib_ids(), allocation="greedy", greedy_step=0.1, record={"source": "x"})
    src = tmp_path / "src"
    model.save_pretrained(src)
    tokenizer.save_pretrained(src)
    out = write_calibrated_folder(src, table, tmp_path / "calibrated")
    loaded = ThresholdTable.load(out)
    assert loaded.to_dict() == table.to_dict()
    assert json.loads((out / TABLE_FILE).read_text())["allocation"] == "greedy"
    assert find_table(out).thresholds_at(0.35) == table.thresholds_at(0.35)
    assert find_table(src) is None
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = calib_ids(1, 8, seed=9)
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, model(input_ids=ids).logits)
    with pytest.raises(PrunelabError, match="already exists"):
        write_calibrated_folder(src, table, out)


def test_levels_between_grid_points_interpolate() -> None:
    _, table = _table()
    lo, hi, mid = table.thresholds_at(0.4), table.thresholds_at(0.45), table.thresholds_at(0.425)
    for name in lo:
        assert mid[name] == pytest.approx((lo[name] + hi[name]) / 2)


# ---------------------------------------------------------------- bad input


def _one_line(excinfo: pytest.ExceptionInfo[PrunelabError]) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("level", [-0.1, 1.0, 1.5, float("nan")])
def test_level_outside_unit_interval(level: float) -> None:
    model, table = _table()
    with pytest.raises(PrunelabError) as e:
        apply_activation_sparsity(model, table, level)
    assert "[0, 1)" in _one_line(e)


def test_level_above_grid_names_the_grid() -> None:
    model, table = _table()
    with pytest.raises(PrunelabError) as e:
        apply_activation_sparsity(model, table, 0.95)
    assert "0 to 0.9 by 0.05" in _one_line(e)


def test_missing_table_says_how_to_calibrate(tmp_path: Path) -> None:
    model = make_model("llama")
    with pytest.raises(PrunelabError) as e:
        apply_activation_sparsity(model, None, 0.5)
    assert "prunelab calibrate-activations" in _one_line(e)
    with pytest.raises(PrunelabError) as e:
        ThresholdTable.load(tmp_path)
    assert "calibrate-activations" in _one_line(e)


def test_other_bad_inputs() -> None:
    model, table = _table()
    with pytest.raises(PrunelabError, match="Did you mean 'index_select'"):
        apply_activation_sparsity(model, table, 0.5, kernels="index_selec")
    with pytest.raises(PrunelabError, match="prefill"):
        apply_activation_sparsity(model, table, 0.5, prefill="sparse")
    with pytest.raises(PrunelabError, match="does not match this model"):
        apply_activation_sparsity(make_model("gpt2"), table, 0.5)
    with pytest.raises(PrunelabError, match="unknown allocation"):
        calibrate_thresholds(model, calib_ids(), allocation="owl")
    with apply_activation_sparsity(model, table, 0.5, kernels="off"):
        with pytest.raises(PrunelabError, match="already applied"):
            apply_activation_sparsity(model, table, 0.5)
    with pytest.raises(PrunelabError, match="malformed"):
        ThresholdTable.from_dict({**table.to_dict(), "sparsity": [[0.0]]})


# ---------------------------------------------------------------- per-step work


@pytest.mark.parametrize("kernel", ["index_select", "embedding_bag"])
def test_readers_of_one_input_share_one_index_computation(kernel: str, monkeypatch) -> None:
    """q/k/v (gate/up) threshold their shared input once and gather its kept indices once per decode step."""
    model, table = _table()
    made: list[int] = []
    derived: list[str] = []

    class Counting(K.Picked):
        def __init__(self, x2: torch.Tensor, keep: torch.Tensor) -> None:
            made.append(x2.shape[0])
            super().__init__(x2, keep)

        def gathered(self):
            if self._gather is None:
                derived.append("gather")
            return super().gathered()

        def bags(self, split: int = 1):
            if split not in self._bags:
                derived.append("bags")
            return super().bags(split)

    ids = calib_ids(1, 6, seed=10)
    with torch.no_grad(), apply_activation_sparsity(model, table, 0.5, kernels=kernel) as handle:
        out = model(input_ids=ids, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        reference = model(input_ids=nxt, past_key_values=copy.deepcopy(out.past_key_values)).logits
        monkeypatch.setattr(K, "Picked", Counting)
        got = model(input_ids=nxt, past_key_values=out.past_key_values).logits
    groups = len(table.groups)  # 4 per block: q/k/v, o, gate/up, down
    assert handle.info["layers"] == 14 and groups == 8
    assert made == [1] * groups and len(derived) == groups
    assert torch.equal(got, reference)


def test_gather_into_a_shared_buffer_is_exact() -> None:
    gen = torch.Generator().manual_seed(11)
    wt = torch.randn(48, 40, generator=gen)
    buffer = torch.empty_like(wt)
    for rows in (1, 3):
        x = torch.randn(rows, 48, generator=gen)
        keep = x.abs() > 0.7
        first = K.index_select_kernel(x, keep, wt, None, buffer=buffer)
        want = K.index_select_kernel(x, keep, wt, None)
        other = K.index_select_kernel(x, x.abs() > 0.1, wt, None, buffer=buffer)  # reuses the buffer
        assert torch.equal(first, want) and not torch.equal(other, want)
