"""The contract every registered method must pass, read from the capabilities it declares; no method is named.

A new method gets these tests for free: register it (one line in `prunelab.pruning.METHODS`) and declare its
`Capabilities`. `test_a_new_layerwise_method_is_one_class_and_one_line` shows it with a throwaway method. A new
stage too (one line in `prunelab.pruning.STAGES`): every stage runs with every method that declares `takes_stages`,
and is refused by every other one.
"""

from __future__ import annotations

import json

import pytest
import torch

from prunelab import PruneConfig, prune
from prunelab.calibration import SquaredNorm, Statistic
from prunelab.errors import PrunelabError
from prunelab.models import find_blocks, prunable_layers, weight_2d
from prunelab.pruning import METHODS, STAGES, make_pruner
from prunelab.pruning.base import LayerwisePruner, Pruner
from prunelab.pruning.masks import Pattern, count_to_prune, is_valid_nm, per_row_mask
from prunelab.pruning.stages import ReconstructStage, RefineStage
from prunelab.training import TrajectoryTracker

PATTERNS = ("unstructured", "2:4", "4:8")
SPARSITY = {False: 0.6, True: 0.3}  # masks / shape-changing methods (a tiny model has few units to remove)


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _model(method: str, model_factory) -> torch.nn.Module:
    """A tiny model with whatever state the method declares it needs."""
    model = model_factory("llama")
    if METHODS[method].capabilities.needs_training_state:
        tracker = TrajectoryTracker(model)
        tracker.attach(model)
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):  # a short "training": the weights move between snapshots
            with torch.no_grad():
                for module in prunable_layers(model).values():
                    w = weight_2d(module)
                    w.add_(0.05 * torch.randn(w.shape, generator=gen))
            tracker.record()
    return model


def _cfg(method: str, pattern: str = "unstructured", **kw) -> PruneConfig:
    caps = METHODS[method].capabilities
    sparsity = SPARSITY[caps.changes_shapes] if pattern == "unstructured" else None
    return PruneConfig(method=method, sparsity=sparsity, pattern=pattern, calib_batch_size=3, seed=0, **kw)


def _expected_zeros(w: torch.Tensor, group: str, sparsity: float) -> int | None:
    """Exact zero count of one layer for the declared comparison group (None: exact only over the model)."""
    if group == "row":
        return w.shape[0] * count_to_prune(w.shape[1], sparsity)
    if group == "layer":
        return count_to_prune(w.numel(), sparsity)
    return None


def check_mask_contract(method: str, pattern: str, model_factory, calib, **kw) -> None:
    caps = METHODS[method].capabilities
    model = _model(method, model_factory)
    shapes = {n: (p.shape, p.dtype) for n, p in model.named_parameters()}
    embed_before = model.get_input_embeddings().weight.clone()
    head_before = model.get_output_embeddings().weight.clone()
    result = prune(model, _cfg(method, pattern, **kw), calib=calib)
    assert result.kind == "mask"

    zeros = total = 0
    for name, module in prunable_layers(model).items():
        w = weight_2d(module)
        total += w.numel()
        zeros += int((w == 0).sum())
        if pattern != "unstructured":
            p = Pattern(*map(int, pattern.split(":")))
            assert is_valid_nm(w, p), name
            assert int((w == 0).sum()) == w.numel() * (p.m - p.n) // p.m, name
            continue
        expected = _expected_zeros(w, caps.comparison_group, 0.6)
        if caps.comparison_group == "row":
            assert ((w == 0).sum(dim=1) == count_to_prune(w.shape[1], 0.6)).all(), name
        if expected is not None:
            assert int((w == 0).sum()) == expected, name
    if pattern == "unstructured" and caps.comparison_group == "model":
        assert zeros == count_to_prune(total, 0.6)
    assert result.achieved_sparsity == zeros / total
    assert result.achieved_sparsity == pytest.approx(0.6 if pattern == "unstructured" else 0.5, abs=0.01)
    # Shapes, dtypes kept; embeddings and lm_head untouched; hooks gone; model still runs.
    assert {n: (p.shape, p.dtype) for n, p in model.named_parameters()} == shapes
    assert torch.equal(model.get_input_embeddings().weight, embed_before)
    assert torch.equal(model.get_output_embeddings().weight, head_before)
    assert _hook_count(model) == 0
    assert torch.isfinite(model(input_ids=calib[:1]).logits).all()
    assert json.dumps(result.to_dict())


def check_shape_contract(method: str, model_factory, calib) -> None:
    model = _model(method, model_factory)
    params_before = sum(p.numel() for p in model.parameters())
    embed_before = model.get_input_embeddings().weight.clone()
    result = prune(model, _cfg(method), calib=calib)
    assert result.kind == "structured"
    report = result.to_dict()
    assert report["kind"] == "structured"
    assert sum(p.numel() for p in model.parameters()) < params_before
    assert report["params_before"] == params_before and report["params_after"] < params_before
    assert torch.equal(model.get_input_embeddings().weight, embed_before)
    assert _hook_count(model) == 0
    assert torch.isfinite(model(input_ids=calib[:1]).logits).all()
    assert json.dumps(report)


def check_contract(method: str, pattern: str, model_factory, calib) -> None:
    caps = METHODS[method].capabilities
    if pattern != "unstructured" and not caps.supports_nm:
        with pytest.raises(PrunelabError, match="N:M"):
            prune(_model(method, model_factory), _cfg(method, pattern), calib=calib)
        return
    if caps.changes_shapes:
        if pattern == "unstructured":
            check_shape_contract(method, model_factory, calib)
        return
    check_mask_contract(method, pattern, model_factory, calib)


def check_declarations(method: str) -> None:
    """The declared capabilities are what a default-configured instance reports."""
    cls = METHODS[method]
    pruner = make_pruner(_cfg(method))
    assert isinstance(pruner, Pruner) and cls.name == method and cls.summary
    assert pruner.caps == cls.capabilities
    assert pruner.needs_calibration == cls.capabilities.needs_calibration
    if isinstance(pruner, LayerwisePruner):
        assert cls.capabilities.needs_calibration == (cls.statistic is not None)


def check_deterministic(method: str, model_factory, calib, **kw) -> None:
    weights = []
    for _ in range(2):
        model = _model(method, model_factory)
        prune(model, _cfg(method, **kw).model_copy(update={"seed": 3}), calib=calib)
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(v, weights[1][k]) for k, v in weights[0].items())


def check_hooks_removed_on_error(method: str, model_factory, calib, **kw) -> None:
    if not make_pruner(_cfg(method, **kw)).needs_calibration:
        return  # no calibration, no hooks
    model = _model(method, model_factory)
    _, blocks = find_blocks(model)

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    blocks[-1].mlp.forward = boom  # fails inside a calibrated forward, while hooks are registered
    with pytest.raises(RuntimeError, match="boom"):
        prune(model, _cfg(method, **kw), calib=calib)
    assert _hook_count(model) == 0


def check_filters(method: str, model_factory, calib) -> None:
    cfg = _cfg(method, targets=["mlp"], ignore=["re:down_proj$"])
    model = _model(method, model_factory)
    if not METHODS[method].capabilities.layer_filters:
        with pytest.raises(PrunelabError):
            prune(model, cfg, calib=calib)
        return
    prune(model, cfg, calib=calib)
    for name, module in prunable_layers(model).items():
        zeros = int((weight_2d(module) == 0).sum())
        if ".mlp." in name and not name.endswith("down_proj"):
            assert zeros > 0, name
        else:
            assert zeros == 0, name


@pytest.mark.parametrize("method", list(METHODS))
def test_declarations(method: str) -> None:
    check_declarations(method)


@pytest.mark.parametrize(("method", "pattern"), [(m, p) for m in METHODS for p in PATTERNS])
def test_contract(method: str, pattern: str, model_factory, calib) -> None:
    check_contract(method, pattern, model_factory, calib)


@pytest.mark.parametrize("method", list(METHODS))
def test_deterministic(method: str, model_factory, calib) -> None:
    check_deterministic(method, model_factory, calib)


@pytest.mark.parametrize("method", list(METHODS))
def test_hooks_removed_on_error(method: str, model_factory, calib) -> None:
    check_hooks_removed_on_error(method, model_factory, calib)


@pytest.mark.parametrize("method", list(METHODS))
def test_target_and_ignore_filters(method: str, model_factory, calib) -> None:
    check_filters(method, model_factory, calib)


@pytest.mark.parametrize("method", [m for m in METHODS if issubclass(METHODS[m], LayerwisePruner)])
def test_sequential_protocol_sees_pruned_inputs(method: str, model_factory, calib) -> None:
    """Block 1's statistics must come from the outputs of the *pruned* block 0 (every calibrated layer-wise
    method; one without a statistic has nothing to check)."""
    from prunelab import calibration

    if METHODS[method].statistic is None:
        return
    model = model_factory("llama")
    seen: list[torch.Tensor] = []
    original = calibration.collect_statistics

    def spy(block, layers, inputs, make):
        seen.append(torch.cat([h.reshape(-1, h.shape[-1]) for h in inputs.hidden]).clone())
        return original(block, layers, inputs, make)

    import prunelab.pruning.base as base

    base.calibration.collect_statistics = spy  # type: ignore[assignment]
    try:
        prune(model, PruneConfig(method=method, sparsity=0.5), calib=calib)
    finally:
        base.calibration.collect_statistics = original  # type: ignore[assignment]
    _, blocks = find_blocks(model)
    ref = calibration.capture_block_inputs(model, blocks[0], calib, 8)
    calibration.run_block(blocks[0], ref, keep_outputs=True)  # the pruned block 0
    assert torch.allclose(seen[1], torch.cat([h.reshape(-1, h.shape[-1]) for h in ref.hidden]), atol=1e-5)


# ---- a new method is one class plus one registry line ----------------------------------------------------------
class RowNorm(LayerwisePruner):
    """Throwaway: |W| x (1 + ||X||) ranked per output row; N:M through the base's helpers."""

    name = "rownorm"
    summary = "test-only layer-wise method"
    statistic = "sq_norm"
    from prunelab.pruning.base import Capabilities as _Caps

    capabilities = _Caps(comparison_group="row")

    def prune_weight(self, name: str, weight: torch.Tensor, stat: Statistic | None, sparsity: float) -> torch.Tensor:
        from prunelab.pruning.masks import nm_mask

        assert isinstance(stat, SquaredNorm) and name
        scores = weight.abs() * (1 + stat.norm.unsqueeze(0))
        return nm_mask(scores, self.pattern) if self.pattern.is_nm else per_row_mask(scores, sparsity)


def test_a_new_layerwise_method_is_one_class_and_one_line(monkeypatch, model_factory, calib) -> None:
    monkeypatch.setitem(METHODS, "rownorm", RowNorm)  # the one registry line
    check_declarations("rownorm")
    for pattern in PATTERNS:
        check_contract("rownorm", pattern, model_factory, calib)
    check_deterministic("rownorm", model_factory, calib)
    check_hooks_removed_on_error("rownorm", model_factory, calib)
    check_filters("rownorm", model_factory, calib)


# ---- every registered stage with every method that takes stages ------------------------------------------------
STAGE_SETTINGS = {"reconstruct_steps": 2, "dsnot_cycles": 5}  # short, to keep the battery fast
TAKES = [m for m in METHODS if METHODS[m].capabilities.takes_stages]


@pytest.mark.parametrize(("stage", "method", "pattern"), [(s, m, p) for s in STAGES for m in TAKES for p in PATTERNS])
def test_every_stage_keeps_the_mask_contract(stage: str, method: str, pattern: str, model_factory, calib) -> None:
    """Exact counts, N:M validity, shapes, hooks gone, as the method alone promises, and the stage recorded."""
    kw = {"stages": [stage], **STAGE_SETTINGS}
    check_mask_contract(method, pattern, model_factory, calib, **kw)
    result = prune(_model(method, model_factory), _cfg(method, pattern, **kw), calib=calib)
    assert [s["name"] for s in result.to_dict()["stages"]] == [stage]


@pytest.mark.parametrize(("stage", "method"), [(s, m) for s in STAGES for m in TAKES])
def test_every_stage_is_deterministic_and_removes_its_hooks(stage: str, method: str, model_factory, calib) -> None:
    kw = {"stages": [stage], **STAGE_SETTINGS}
    check_deterministic(method, model_factory, calib, **kw)
    check_hooks_removed_on_error(method, model_factory, calib, **kw)


@pytest.mark.parametrize(("stage", "method"), [(s, m) for s in STAGES for m in METHODS if m not in TAKES])
def test_methods_that_take_no_stages_refuse_them(stage: str, method: str) -> None:
    with pytest.raises(PrunelabError, match="takes no stages"):
        make_pruner(_cfg(method, stages=[stage]))


# ---- the stage seam ---------------------------------------------------------------------------------------------
def test_stages_run_where_the_engine_promises(monkeypatch, model_factory, calib) -> None:
    calls: list[tuple[str, object]] = []

    class KeepMask(RefineStage):
        name = "keep"

        def refine(self, name, weight, dense, mask, stat, sparsity, pattern):
            calls.append(("refine", name))
            return mask

    class Note(ReconstructStage):
        name = "note"

        def reconstruct(self, index, block, layers, inputs):
            assert all(int((weight_2d(m) == 0).sum()) > 0 for m in layers.values())  # already pruned
            calls.append(("reconstruct", index))

    monkeypatch.setitem(STAGES, "keep", KeepMask)
    monkeypatch.setitem(STAGES, "note", Note)
    model = model_factory("llama")
    plain = model_factory("llama")
    cfg = PruneConfig(method="wanda", sparsity=0.5)
    prune(model, cfg, calib=calib, stages=["keep", "note"])
    prune(plain, cfg, calib=calib)
    layers = list(prunable_layers(model))
    assert [c for c in calls if c[0] == "refine"] == [("refine", n) for n in layers]
    assert [c for c in calls if c[0] == "reconstruct"] == [("reconstruct", 0), ("reconstruct", 1)]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values(), strict=True))
    with pytest.raises(PrunelabError, match="unknown stage 'kep'"):
        make_pruner(cfg, stages=["kep"])
