"""Compact sparse checkpoint: bit-exact round trip (unstructured, N:M, several dtypes), hand-computed sizes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunelab.errors import PrunelabError
from prunelab.measurement import size as S
from prunelab.models import prunable_layers, weight_2d

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _unstructured(shape: tuple[int, int], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen)
    w[w.abs() < 0.67] = 0  # about 50% zeros
    w = w.to(dtype)
    w[0, 0], w[0, 1], w[0, 2], w[0, 3] = -0.0, float("nan"), float("inf"), -float("inf")
    return w


def _n_m(shape: tuple[int, int], n: int, m: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen)
    groups = w.view(-1, m)
    drop = groups.abs().argsort(dim=1)[:, : m - n]
    groups.scatter_(1, drop, 0.0)
    w = w.to(dtype)
    w[0, :m] = 0  # a group with fewer than N non-zeros: padded with stored zeros
    w[1, 0] = -0.0  # -0.0 has a bit set: it is kept as a value, the group then still has <= N stored
    w[1, 1:m] = torch.tensor([0.0] * (m - 1), dtype=dtype)
    return w


def test_bit_packing_hand_computed() -> None:
    bits = torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 1, 1], dtype=torch.bool)
    packed = S.pack_bits(bits)
    assert packed.tolist() == [1, 3]  # LSB first: element 8j + i is bit i of byte j
    assert S.unpack_bits(packed, 10).tolist() == bits.tolist()
    values = torch.tensor([5, 0, 3, 1])
    assert S.unpack_uints(S.pack_uints(values, 3), 4, 3).tolist() == [5, 0, 3, 1]
    # 2:4 position sets in lexicographic order: rank 0 = (0, 1) ... rank 5 = (2, 3); 3 bits per group.
    assert S.combinations(2, 4).tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    assert S._ranks(torch.tensor([[0, 1], [1, 3], [2, 3]]), 2, 4).tolist() == [0, 4, 5]
    assert S.pattern_bits(2, 4) == 3 and S.pattern_bits(4, 8) == 7 and S.pattern_bits(0, 4) == 0


def test_plan_sizes_hand_computed() -> None:
    w = torch.rand(8, 16).half() + 1  # no zeros
    w.view(-1, 4)[:, 1::2] = 0  # exactly 2 of every 4: 64 stored values
    p = S.plan(w)
    # 32 groups x 2 values x 2 bytes = 128, plus 32 x 3 bits = 12 bytes; a bitmask needs 128 / 8 + 64 x 2 = 144.
    assert (p.encoding, p.n, p.m, p.nbytes) == ("nm", 2, 4, 140)
    dense = torch.randn(4, 6)
    assert S.plan(dense) == S.Plan("dense", 96)
    half = torch.zeros(16, 8)
    half[:, ::2] = 1.0  # 64 stored values, but 2 of every 4 consecutive: N:M wins over the 16-byte bitmask
    assert S.plan(half).encoding == "nm"
    scattered = torch.zeros(10, 10)
    scattered.view(-1)[::3] = 1.0  # 34 of 100: no M divides 10 -> bitmask = ceil(100/8) + 34 * 4 = 149
    assert S.plan(scattered) == S.Plan("bitmask", 13 + 34 * 4)


def test_bit_equal_distinguishes_negative_zero_and_nan_payloads() -> None:
    a = torch.tensor([0.0, float("nan")])
    assert S.bit_equal(a, a.clone())
    assert not S.bit_equal(a, torch.tensor([-0.0, float("nan")]))
    assert not S.bit_equal(a, a.to(torch.float64))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_round_trip_bit_exact(tmp_path: Path, dtype: torch.dtype) -> None:
    state = {
        "unstructured": _unstructured((32, 48), dtype),
        "two_four": _n_m((16, 32), 2, 4, dtype, seed=1),
        "two_eight": _n_m((8, 64), 2, 8, dtype, seed=2),
        "dense": torch.randn(3, 5).to(dtype),
        "zeros": torch.zeros(4, 8, dtype=dtype),
        "vector": torch.randn(7).to(dtype),
        "scalar": torch.tensor(1.5, dtype=dtype),
        "ints": torch.tensor([0, 3, 0, 0, 0, 0, 0, 0, 7]),
        "flags": torch.tensor([True, False, False, False, False, False, False, False, False]),
        "empty": torch.zeros(0, 4, dtype=dtype),
    }
    state["tied"] = state["unstructured"]  # shared storage, stored once
    report = S.save_compact(state, tmp_path / "c.safetensors")
    back = S.load_compact(tmp_path / "c.safetensors")
    assert sorted(back) == sorted(state)
    for name, t in state.items():
        assert S.bit_equal(t, back[name]), name
    assert report.nm_patterns == {"2:4": 1, "2:8": 1, "0:4": 1}  # all-zero rows store nothing
    assert report.encodings["bitmask"] >= 1 and report.encodings["dense"] >= 3
    assert report.dense_payload_bytes == sum(t.numel() * t.element_size() for k, t in state.items() if k != "tied")


def test_compact_fp16_half_sparse_is_near_56_percent(tmp_path: Path) -> None:
    w = _unstructured((256, 512), torch.float16, seed=3)
    w[w != 0] = 1.0
    keep = torch.rand(w.shape, generator=torch.Generator().manual_seed(4)) < 0.5
    w = torch.where(keep, torch.randn(w.shape).half(), torch.zeros((), dtype=torch.float16))
    nnz = int(torch.count_nonzero(w))
    dense = S.save_dense({"w": w}, tmp_path / "d.safetensors")
    compact = S.save_compact({"w": w}, tmp_path / "c.safetensors").bytes
    payload = math.ceil(w.numel() / 8) + 2 * nnz
    assert dense - w.numel() * 2 < 200  # safetensors: 8-byte length + small JSON header
    assert payload <= compact < payload + 1000
    assert 0.54 < compact / dense < 0.58


def test_model_round_trip_through_compact_file(tmp_path: Path, model_factory) -> None:
    model = model_factory("llama")
    with torch.no_grad():
        for module in prunable_layers(model).values():
            w = weight_2d(module)
            w[w.abs() < w.abs().median()] = 0  # 50% unstructured
        layers = list(prunable_layers(model).values())
        w = weight_2d(layers[0])
        w.copy_(_n_m(tuple(w.shape), 2, 4, torch.float32))
    S.save_compact(model, tmp_path / "m.safetensors")
    fresh = AutoModelForCausalLM.from_config(model.config)
    S.load_compact_into(fresh, tmp_path / "m.safetensors")
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert S.bit_equal(a, b), name
    ids = torch.randint(0, model.config.vocab_size, (1, 12))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, fresh(ids).logits)
    sizes = S.measure_sizes(model, torch.float16)
    assert sizes["round_trip_bit_exact"] is True and sizes["compact_bytes"] < sizes["dense_bytes"]


def test_load_rejects_a_plain_safetensors_file(tmp_path: Path) -> None:
    S.save_dense({"w": torch.ones(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(PrunelabError, match="not a prunelab-compact"):
        S.load_compact(tmp_path / "plain.safetensors")
    with pytest.raises(PrunelabError, match="does not exist"):
        S.load_compact(tmp_path / "missing.safetensors")
