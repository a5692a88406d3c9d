"""The stages on their own: DSnoT's swaps (hand-computed case, never a higher error on correlated inputs, exact
counts and N:M), block-wise reconstruction (lower block error against dense, pruned weights stay zero, the seed
matters), the sweep ids they leave alone, and the CLI recording the recipe."""

from __future__ import annotations

import json

import pytest
import torch

from prunelab import PruneConfig, prune
from prunelab.calibration import Moments, capture_block_inputs
from prunelab.cli import main
from prunelab.config.methods import SparseGPTOptions
from prunelab.models import find_blocks, prunable_layers, weight_2d
from prunelab.pruning.dsnot import dsnot_refine, layer_error
from prunelab.pruning.masks import (
    UNSTRUCTURED,
    Pattern,
    count_to_prune,
    is_valid_nm,
    nm_mask,
    per_layer_mask,
    per_row_mask,
)
from prunelab.pruning.sparsegpt import sparsegpt_prune
from prunelab.sweep import expand_grid, parse_sweep_yaml


def _moments(x: torch.Tensor) -> Moments:
    stat = Moments(x.shape[1], x.device)
    for chunk in x.split(37):  # several batches, as the engine feeds it
        stat.add(chunk)
    return stat


def _direct_error(x: torch.Tensor, dense: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> float:
    """||X (W_dense - W_pruned)^T||^2 / tokens, from the inputs themselves (not from the statistic)."""
    pruned = weight.masked_fill(mask, 0.0)
    return float(((x @ (dense - pruned).t()) ** 2).sum() / x.shape[0])


def test_dsnot_hand_computed_swap() -> None:
    """Orthogonal inputs: feature 0 is a constant 10, features 1-3 are +-1 with mean 0. Magnitude prunes w0, w1:
    error 0.5^2 * 100 + 1^2 = 26. DSnoT grows w0 (its E[x] / Var[x] is by far the largest) and prunes w2 (error
    1 + 4 = 5; pruning w3 would give 1 + 9 = 10). Then no swap lowers the error: it stops at Wanda's mask."""
    x = torch.tensor([[10, 1, 1, 1], [10, -1, 1, -1], [10, 1, -1, -1], [10, -1, -1, 1]], dtype=torch.float32)
    w = torch.tensor([[0.5, 1.0, 2.0, 3.0]])
    mask = per_row_mask(w.abs(), 0.5)
    assert mask.tolist() == [[True, True, False, False]]
    stat = _moments(x)
    assert layer_error(w, w, mask, stat.matrix) == pytest.approx(26.0)
    new, swaps = dsnot_refine(w.clone(), w, mask, stat, UNSTRUCTURED, cycles=10, threshold=0.0)
    assert new.tolist() == [[False, True, True, False]] and swaps == 1
    assert layer_error(w, w, new, stat.matrix) == pytest.approx(5.0)
    assert _direct_error(x, w, w, new) == pytest.approx(5.0)


def _correlated(seed: int, tokens: int = 600, width: int = 48) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(width, width, generator=gen) * 0.4 + torch.eye(width)
    offset = torch.randn(width, generator=gen)  # non-zero means, as after a norm layer's bias
    return torch.randn(tokens, width, generator=gen) @ mix + offset


def _start(start: str, dense: torch.Tensor, weight: torch.Tensor, stat: Moments) -> tuple[Pattern, torch.Tensor]:
    """The pattern and the starting mask a method named by `start` gives (sparsegpt also updates `weight`)."""
    pattern = Pattern(*map(int, start.split(":"))) if ":" in start else UNSTRUCTURED
    if start == "magnitude-row":
        return pattern, per_row_mask(dense.abs(), 0.6)
    if start == "magnitude-layer":
        return pattern, per_layer_mask(dense.abs(), 0.6)
    if start == "wanda":
        return pattern, per_row_mask(dense.abs() * torch.diagonal(stat.matrix).sqrt(), 0.6)
    if start == "sparsegpt":  # the kept weights are updated: errors are measured against the dense weight
        return pattern, sparsegpt_prune(weight, stat.matrix, 0.6, pattern, SparseGPTOptions())[0]
    return pattern, nm_mask(dense.abs(), pattern)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("start", ["magnitude-row", "magnitude-layer", "wanda", "2:4", "4:8", "sparsegpt"])
def test_dsnot_never_increases_the_error_and_keeps_the_counts(seed: int, start: str) -> None:
    x = _correlated(seed)
    gen = torch.Generator().manual_seed(100 + seed)
    dense = torch.randn(24, x.shape[1], generator=gen)
    stat = _moments(x)
    weight = dense.clone()
    pattern, mask = _start(start, dense, weight, stat)
    before = _direct_error(x, dense, weight, mask)
    new, swaps = dsnot_refine(weight, dense, mask, stat, pattern, cycles=50, threshold=0.0)
    after = _direct_error(x, dense, weight, new)
    assert after <= before * (1 + 1e-5)
    assert swaps > 0 and after < before * 0.999  # it does find better masks here
    assert torch.equal(new.sum(1), mask.sum(1))  # the exact count of every row (and so of the layer)
    if pattern.is_nm:
        assert is_valid_nm(weight.masked_fill(new, 0.0), pattern)
        groups = new.reshape(new.shape[0], -1, pattern.m).sum(-1)
        assert bool((groups == pattern.m - pattern.n).all())
    assert layer_error(dense, weight, new, stat.matrix) == pytest.approx(after, rel=1e-3)


def _dsnot_full_matrix(weight, dense, mask, stat, pattern, cycles, threshold):
    """DSnoT as first written here: every cycle scores every (row, column) as the weight pruned in exchange, N:M by
    masking columns outside the revived weight's group. The library now computes only the group's m columns under
    N:M and carries the b^2 H_pp term: it must make exactly these swaps."""
    rows, cols = weight.shape
    h, mean, var = stat.matrix, stat.mean, stat.var.clamp_min(1e-12)
    h_diag = torch.diagonal(h)
    mask = mask.clone()
    kept = weight.masked_fill(mask, 0.0)
    hd = (dense - kept) @ h
    err = (hd * (dense - kept)).sum(1)
    eps = (dense - kept) @ mean
    growth = dense * mean / var
    tried = ~mask
    group = torch.arange(cols) // pattern.m if pattern.is_nm else None
    ar = torch.arange(rows)
    active = torch.ones(rows, dtype=torch.bool)
    swaps = 0
    for _ in range(cycles):
        active &= (eps.abs() > threshold) & (~tried).any(1) & (err > 0)
        if not bool(active.any()):
            break
        g = (torch.sign(eps).unsqueeze(1) * growth).masked_fill(tried, float("-inf")).argmax(1)
        a, h_g = dense[ar, g], h[g]
        gain = -2 * a * hd[ar, g] + a * a * h_diag[g]
        change = gain.unsqueeze(1) + 2 * kept * (hd - a.unsqueeze(1) * h_g) + kept.square() * h_diag
        allowed = ~mask if group is None else ~mask & (group.unsqueeze(0) == group[g].unsqueeze(1))
        change = change.masked_fill(~allowed, float("inf"))
        p = change.argmin(1)
        best = change[ar, p]
        accept = active & (best < -1e-6 * err)
        tried[ar[active], g[active]] = True
        if not bool(accept.any()):
            continue
        r, g, p, a = ar[accept], g[accept], p[accept], a[accept]
        b = kept[r, p]
        hd[r] += b.unsqueeze(1) * h[p] - a.unsqueeze(1) * h_g[accept]
        eps[r] += b * mean[p] - a * mean[g]
        err[r] += best[accept]
        kept[r, g], kept[r, p] = a, 0.0
        mask[r, g], mask[r, p] = False, True
        tried[r, p] = True
        weight[r, g] = a
        swaps += int(accept.sum())
    return mask, swaps


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("start", ["magnitude-row", "wanda", "2:4", "4:8", "sparsegpt"])
def test_dsnot_makes_the_same_swaps_as_the_full_matrix_formulation(seed: int, start: str) -> None:
    x = _correlated(seed, width=64)
    dense = torch.randn(40, 64, generator=torch.Generator().manual_seed(200 + seed))
    stat = _moments(x)
    weight = dense.clone()
    pattern, mask = _start(start, dense, weight, stat)
    ref_weight = weight.clone()
    new, swaps = dsnot_refine(weight, dense, mask, stat, pattern, cycles=40, threshold=0.0)
    ref, ref_swaps = _dsnot_full_matrix(ref_weight, dense, mask, stat, pattern, cycles=40, threshold=0.0)
    assert swaps == ref_swaps > 0
    assert torch.equal(new, ref) and torch.equal(weight, ref_weight)


def _block0_error(model, dense, calib) -> float:
    """Mean squared difference of block 0's outputs against the dense model's on the same (embedding) inputs."""
    _, blocks = find_blocks(model)
    _, dense_blocks = find_blocks(dense)
    inputs = capture_block_inputs(model, blocks[0], calib, 4)
    with torch.no_grad():
        outs = [blocks[0](h, **kw)[0] for h, kw in zip(inputs.hidden, inputs.kwargs, strict=True)]
        refs = [dense_blocks[0](h, **kw)[0] for h, kw in zip(inputs.hidden, inputs.kwargs, strict=True)]
    return sum(float(((o - r) ** 2).mean()) for o, r in zip(outs, refs, strict=True))


@pytest.mark.parametrize("scope", ["block", "separate"])
@pytest.mark.parametrize(("method", "pattern"), [("wanda", "unstructured"), ("sparsegpt", "2:4")])
def test_reconstruction_lowers_the_block_error_and_keeps_pruned_weights_zero(
    scope: str, method: str, pattern: str, model_factory
) -> None:
    calib = torch.randint(0, 320, (8, 32), generator=torch.Generator().manual_seed(4))
    dense = model_factory("llama")
    plain, rec = model_factory("llama"), model_factory("llama")
    base = PruneConfig(method=method, sparsity=0.6 if pattern == "unstructured" else None, pattern=pattern,
                       calib_batch_size=2)  # fmt: skip
    prune(plain, base, calib=calib)
    cfg = base.model_copy(update={"stages": ["reconstruct"], "reconstruct_steps": 24, "reconstruct_lr": 3e-3,
                                  "reconstruct_scope": scope})  # fmt: skip
    result = prune(rec, cfg, calib=calib)
    assert _block0_error(rec, dense, calib) < 0.8 * _block0_error(plain, dense, calib)
    plain_layers, rec_layers = prunable_layers(plain), prunable_layers(rec)
    for name, module in rec_layers.items():
        w = weight_2d(module)
        if ".layers.0." in name:  # same inputs, same mask as the method alone: only kept weights moved
            assert torch.equal(w == 0, weight_2d(plain_layers[name]) == 0), name
            assert not torch.equal(w, weight_2d(plain_layers[name])), name
        if pattern == "2:4":
            assert is_valid_nm(w, Pattern(2, 4)), name
        else:
            assert bool(((w == 0).sum(1) == count_to_prune(w.shape[1], 0.6)).all()), name
    record = result.to_dict()["stages"][0]
    assert (record["name"], record["reconstruct_steps"], record["reconstruct_scope"]) == ("reconstruct", 24, scope)
    assert all(not p.requires_grad or p.grad is None for p in rec.parameters())


@pytest.mark.parametrize("targets", [None, ["re:layers\\.1\\."]])
def test_reconstruction_target_model_is_the_dense_models_hidden_states(targets, model_factory, monkeypatch) -> None:
    """Target "model": block i is fitted to the dense model's own output of block i (not to the dense block run
    on the pruned inputs), also when an earlier block has no selected layer and is never pruned."""
    from prunelab.pruning.reconstruct import Reconstruct

    calib = torch.randint(0, 320, (4, 16), generator=torch.Generator().manual_seed(5))
    dense = model_factory("llama")
    _, dense_blocks = find_blocks(dense)
    reference: list[torch.Tensor] = []
    handles = [b.register_forward_hook(lambda _m, _a, out: reference.append(out[0] if isinstance(out, tuple) else out))
               for b in dense_blocks]  # fmt: skip
    with torch.no_grad():
        dense(calib)
    for h in handles:
        h.remove()
    assert len(reference) == len(dense_blocks) == 2
    seen: dict[int, torch.Tensor] = {}
    capture = Reconstruct.capture

    def spy(self, index, block, layers, inputs):
        capture(self, index, block, layers, inputs)
        if self._targets:
            seen[index] = torch.cat(self._targets[0])

    monkeypatch.setattr(Reconstruct, "capture", spy)
    for target in ("model", "block"):
        seen.clear()
        cfg = PruneConfig(method="wanda", sparsity=0.6, stages=["reconstruct"], reconstruct_steps=4,
                          reconstruct_lr=3e-3, calib_batch_size=2, reconstruct_target=target,
                          targets=targets)  # fmt: skip
        prune(model_factory("llama"), cfg, calib=calib)
        assert sorted(seen) == ([1] if targets else [0, 1])
        for i in seen:
            close = torch.allclose(seen[i], reference[i], atol=1e-5)
            # "block" sees the pruned model's inputs, which differ from the dense model's after a pruned block
            assert close == (target == "model" or (i == 0 or (targets is not None and i == 1))), (target, i)


def test_reconstruction_depends_on_the_seed_and_only_on_it(model_factory, calib) -> None:
    def run(seed: int) -> dict[str, torch.Tensor]:
        model = model_factory("llama")
        cfg = PruneConfig(method="wanda", sparsity=0.5, stages=["reconstruct"], reconstruct_steps=3,
                          reconstruct_lr=1e-3, calib_batch_size=1, seed=seed)  # fmt: skip
        prune(model, cfg, calib=calib)
        return {k: v.clone() for k, v in model.state_dict().items()}

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the batch order comes from the seed


def test_sweep_point_ids_are_unchanged_by_the_stage_settings() -> None:
    """Ids computed before the stage fields existed (a sweep store resumes on them)."""
    grid = """grid:
  - {method: wanda, sparsities: [0.5, 0.7], patterns: [unstructured, "2:4"]}
  - {method: sparsegpt, sparsities: [0.6]}
  - {method: magnitude, allocation: owl, sparsities: [0.5]}
"""
    ids = [p.point_id for p in expand_grid(parse_sweep_yaml(grid))]
    assert ids == ["8b1c4dbc07edfc90", "bdc69136110359d7", "4adc70f951eef0c4", "3bcfdc8d275dd6e6",
                   "7ae5201a5ca8c3ba", "0a88ba3b7dbb28a1"]  # fmt: skip
    staged = expand_grid(parse_sweep_yaml("grid:\n  - {method: wanda, sparsities: [0.5], stages: [[], [dsnot]]}\n"))
    assert staged[1].point_id == ids[1] and staged[2].point_id != ids[1]
    assert staged[2].config["prune"]["stages"] == ["dsnot"]


def test_cli_prune_with_stages_records_the_recipe(tiny_folder, tmp_path, capsys, no_network) -> None:
    corpus = str(tmp_path / "corpus.txt")
    out_dir = tmp_path / "pruned"
    argv = ["-q", "prune", "--model", str(tiny_folder), "--method", "wanda", "--sparsity", "0.5", "--refine",
            "dsnot", "--reconstruct-steps", "2", "--calib", corpus, "--calib-samples", "4", "--calib-seqlen", "32",
            "--ppl", corpus, "--seqlen", "32", "--no-eval-before", "--output", str(out_dir)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    meta = json.loads((out_dir / "prunelab.json").read_text())
    recipe = meta["recipe"]
    assert recipe["method"] == "wanda" and recipe["pattern"] == "unstructured" and recipe["sparsity"] == 0.5
    assert [s["name"] for s in recipe["stages"]] == ["dsnot", "reconstruct"]
    assert recipe["stages"][0]["dsnot_cycles"] == 50
    assert recipe["stages"][1] == {"name": "reconstruct", "reconstruct_steps": 2, "reconstruct_lr": 1e-4,
                                   "reconstruct_scope": "block", "reconstruct_target": "block"}  # fmt: skip
    assert recipe["calibration"] == {"source": corpus, "samples": 4, "seqlen": 32, "seed": 0}
    assert meta["config"]["stages"] == ["dsnot", "reconstruct"]
    assert [s["name"] for s in meta["stages"]] == ["dsnot", "reconstruct"] and meta["stages"][0]["swaps"] > 0
    assert meta["achieved_sparsity"] == 0.5
