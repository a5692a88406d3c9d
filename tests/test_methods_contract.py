"""The contract every registered method must pass; a new method gets these tests for free."""

from __future__ import annotations

import pytest
import torch

from prunelab import METHODS, PruneConfig, prune
from prunelab.models import find_blocks, prunable_layers, weight_2d
from prunelab.pruning.masks import Pattern, count_to_prune, is_valid_nm

# A method that needs state a fresh random model cannot have (a recorded training trajectory) sets
# `needs_trajectory` and checks the same contract in its own test file (tests/test_trajectory.py). A method that
# removes units instead of zeroing weights sets `kind = "structured"` (its contract: tests/test_structured.py).
CONTRACT_METHODS = [
    m
    for m, cls in METHODS.items()
    if not getattr(cls, "needs_trajectory", False) and getattr(cls, "kind", "mask") != "structured"
]
CASES = [(m, p) for m in CONTRACT_METHODS for p in ("unstructured", "2:4", "4:8")]


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize(("method", "pattern"), CASES)
def test_contract(method: str, pattern: str, model_factory, calib) -> None:
    model = model_factory("llama")
    shapes = {n: (p.shape, p.dtype) for n, p in model.named_parameters()}
    embed_before = model.get_input_embeddings().weight.clone()
    head_before = model.get_output_embeddings().weight.clone()
    sparsity = 0.6 if pattern == "unstructured" else None
    cfg = PruneConfig(method=method, sparsity=sparsity, pattern=pattern, calib_batch_size=3, seed=0)
    result = prune(model, cfg, calib=calib)

    # Exact sparsity: per row for wanda, per layer otherwise, every N:M group valid.
    expected_zeros = total = 0
    for name, module in prunable_layers(model).items():
        w = weight_2d(module)
        total += w.numel()
        if pattern == "unstructured":
            if method == "wanda":
                per_row = (w == 0).sum(dim=1)
                assert (per_row == count_to_prune(w.shape[1], 0.6)).all(), name
                expected_zeros += w.shape[0] * count_to_prune(w.shape[1], 0.6)
            else:
                assert int((w == 0).sum()) == count_to_prune(w.numel(), 0.6), name
                expected_zeros += count_to_prune(w.numel(), 0.6)
        else:
            p = Pattern(*map(int, pattern.split(":")))
            assert is_valid_nm(w, p), name
            assert int((w == 0).sum()) == w.numel() * (p.m - p.n) // p.m, name
            expected_zeros += w.numel() * (p.m - p.n) // p.m
    assert result.achieved_sparsity == expected_zeros / total
    assert result.achieved_sparsity == pytest.approx(0.6 if pattern == "unstructured" else 0.5, abs=0.01)
    # Shapes, dtypes kept; embeddings and lm_head untouched; hooks gone; model still runs.
    assert {n: (p.shape, p.dtype) for n, p in model.named_parameters()} == shapes
    assert torch.equal(model.get_input_embeddings().weight, embed_before)
    assert torch.equal(model.get_output_embeddings().weight, head_before)
    assert _hook_count(model) == 0
    out = model(input_ids=calib[:1]).logits
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("method", CONTRACT_METHODS)
def test_deterministic(method: str, model_factory, calib) -> None:
    weights = []
    for _ in range(2):
        model = model_factory("llama")
        prune(model, PruneConfig(method=method, sparsity=0.5, seed=3), calib=calib)
        weights.append(torch.cat([weight_2d(m).flatten() for m in prunable_layers(model).values()]))
    assert torch.equal(weights[0], weights[1])


@pytest.mark.parametrize("method", CONTRACT_METHODS)
def test_hooks_removed_on_error(method: str, model_factory, calib, monkeypatch) -> None:
    model = model_factory("llama")
    cls = METHODS[method]

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(cls, "prune_weight", boom)
    with pytest.raises(RuntimeError, match="boom"):
        prune(model, PruneConfig(method=method, sparsity=0.5), calib=calib)
    assert _hook_count(model) == 0


@pytest.mark.parametrize("method", CONTRACT_METHODS)
def test_target_and_ignore_filters(method: str, model_factory, calib) -> None:
    model = model_factory("llama")
    prune(model, PruneConfig(method=method, sparsity=0.5, targets=["mlp"], ignore=["re:down_proj$"]), calib=calib)
    for name, module in prunable_layers(model).items():
        zeros = int((weight_2d(module) == 0).sum())
        if ".mlp." in name and not name.endswith("down_proj"):
            assert zeros > 0, name
        else:
            assert zeros == 0, name


def test_sequential_protocol_sees_pruned_inputs(model_factory, calib) -> None:
    """Block 1's statistics must come from the outputs of the *pruned* block 0."""
    from prunelab import calibration

    model = model_factory("llama")
    seen: list[torch.Tensor] = []
    original = calibration.collect_statistics

    def spy(block, layers, inputs, make):
        seen.append(torch.cat([h.reshape(-1, h.shape[-1]) for h in inputs.hidden]).clone())
        return original(block, layers, inputs, make)

    import prunelab.pruning.base as base

    base.calibration.collect_statistics = spy  # type: ignore[assignment]
    try:
        prune(model, PruneConfig(method="wanda", sparsity=0.5), calib=calib)
    finally:
        base.calibration.collect_statistics = original  # type: ignore[assignment]
    _, blocks = find_blocks(model)
    ref = calibration.capture_block_inputs(model, blocks[0], calib, 8)
    calibration.run_block(blocks[0], ref, keep_outputs=True)  # the pruned block 0
    assert torch.allclose(seen[1], torch.cat([h.reshape(-1, h.shape[-1]) for h in ref.hidden]), atol=1e-5)
