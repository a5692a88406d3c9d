"""The one interface every method implements, and the layer-wise base most methods share.

`Pruner.prune(model, calib) -> PruneResult` is the whole contract, and `Pruner.capabilities` declares what callers
may rely on (does it change shapes, need calibration or training state, take N:M, which group it ranks within), so
no caller probes a class for attributes. `LayerwisePruner` owns the block loop, the hooks and the propagation of
pruned outputs (see `prunelab.calibration`); a subclass only names the statistic it needs (`statistic`) and says
how it prunes one weight matrix (`prune_weight`, given the layer's name). The pattern (unstructured or N:M), the
per-layer sparsity and the optional stages (`prunelab.pruning.stages`) are handled here, so every layer-wise
method honours them.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel
from torch import nn

from prunelab import calibration
from prunelab._util import progress
from prunelab.config.base import build
from prunelab.config.methods import NoOptions
from prunelab.config.pattern import Pattern
from prunelab.config.prune import PruneConfig
from prunelab.errors import PrunelabError
from prunelab.models import block_linears, check_filters, find_blocks, weight_2d
from prunelab.pruning.allocation import block_sparsities
from prunelab.pruning.blocks import BlockStore
from prunelab.pruning.stages import make_stages

log = logging.getLogger(__name__)

ComparisonGroup = Literal["row", "layer", "model", "unit"]
ResultKind = Literal["mask", "structured"]

__all__ = ["BlockStore", "Capabilities", "LayerResult", "LayerwisePruner", "NoOptions", "PruneResult", "Pruner"]


@dataclass(frozen=True)
class Capabilities:
    """What a method does, declared once on its class (with default options) and read by every caller.

    - changes_shapes: removes whole units, so tensor shapes change (a mask restore cannot undo it; the result is
      `kind="structured"`, its `sparsity` is a share of parameters removed).
    - needs_calibration: wants calibration token windows.
    - needs_training_state: needs state recorded while training (e.g. a weight trajectory); a fresh model has none.
    - supports_nm: takes an N:M pattern.
    - comparison_group: where the sparsity is exact: each output "row", each "layer", the whole "model" (all
      selected layers ranked together), or whole "unit"s (channels, heads, layers).
    - block_local: needs one decoder block at a time (so it can stream a model larger than memory).
    - layer_filters: honours `targets` / `ignore`.
    - takes_stages: runs the refine / reconstruct stages of `prunelab.pruning.stages` (layer-wise engine).
    """

    changes_shapes: bool = False
    needs_calibration: bool = True
    needs_training_state: bool = False
    supports_nm: bool = True
    comparison_group: ComparisonGroup = "layer"
    block_local: bool = True
    layer_filters: bool = True
    takes_stages: bool = False


@dataclass
class LayerResult:
    numel: int
    zeros: int
    target_sparsity: float

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel


@dataclass
class PruneResult:
    """What a method did: per-layer sparsities, totals, time, and notes worth a user's attention."""

    method: str
    pattern: str
    sparsity: float
    layers: dict[str, LayerResult] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    kind: ResultKind = "mask"  # "structured": units removed, `extra` holds the parameter counts before/after

    @property
    def achieved_sparsity(self) -> float:
        numel = sum(r.numel for r in self.layers.values())
        return sum(r.zeros for r in self.layers.values()) / numel if numel else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "method": self.method,
            "pattern": self.pattern,
            "sparsity": self.sparsity,
            "achieved_sparsity": self.achieved_sparsity,
            "pruned_params": sum(r.zeros for r in self.layers.values()),
            "prunable_params": sum(r.numel for r in self.layers.values()),
            "layers": {k: {**asdict(v), "sparsity": v.sparsity} for k, v in self.layers.items()},
            "prune_seconds": self.seconds,
            "notes": self.notes,
            **self.extra,
        }


class Pruner(ABC):
    """A pruning method. Subclasses set `name`, `summary`, `capabilities`, `Options` and implement `prune`."""

    name: ClassVar[str]
    summary: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, cfg: PruneConfig) -> None:
        check_filters(cfg.targets, "targets")
        check_filters(cfg.ignore, "ignore")
        self.cfg = cfg
        self.notes: list[str] = []  # things a user should know, copied into the result (e.g. raised dampening)
        self.pattern: Pattern = cfg.pattern_obj
        self.options: Any = build(self.Options, cfg.options, f"options for method '{self.name}'")
        self.sparsity = self._resolve_sparsity(cfg)

    def _resolve_sparsity(self, cfg: PruneConfig) -> float:
        return cfg.resolved_sparsity()

    @property
    def caps(self) -> Capabilities:
        """The capabilities with this config's options applied (the class declares them for default options)."""
        return self.capabilities

    @property
    def needs_calibration(self) -> bool:
        """Whether `prune` needs calibration token windows."""
        return self.caps.needs_calibration

    @abstractmethod
    def prune(self, model: nn.Module, calib: torch.Tensor | None) -> PruneResult:
        """Prune `model` in place; `calib` is (n, L) token ids, or None when the method needs none."""


class LayerwisePruner(Pruner):
    """Prune each Linear of each block from one statistic of its inputs.

    `statistic` is None (no calibration), "sq_norm" or "hessian" (see `prunelab.calibration.STATISTICS`).
    """

    statistic: ClassVar[str | None] = None

    def __init__(self, cfg: PruneConfig, stages: Sequence[str] = ()) -> None:
        super().__init__(cfg)
        names = list(dict.fromkeys([*cfg.stages, *stages]))
        self.refine_stages, self.reconstruct_stages = make_stages(names, cfg)
        self.stages = [*self.refine_stages, *self.reconstruct_stages]
        # Statistics collected per layer: the method's, then those its refine stages read (one pass for all).
        wanted = [self.statistic, *(s.statistic for s in self.refine_stages)]
        self.statistics = list(dict.fromkeys(n for n in wanted if n is not None))

    @property
    def caps(self) -> Capabilities:
        caps = self.capabilities
        # OWL's outlier ratios and the stages' statistics or block runs need activations
        needs = self.cfg.allocation == "owl" or any(s.needs_calibration for s in self.stages)
        if needs and not caps.needs_calibration:
            caps = replace(caps, needs_calibration=True)
        if self.cfg.owl_auto:  # the search prunes and scores whole-model candidates (`pruning.owl_auto`)
            caps = replace(caps, block_local=False)
        return caps

    def hessian_dtype(self, device: torch.device) -> torch.dtype:
        """Precision of the X^T X products of Hessian statistics (`calibration.Hessian`); float32 unless a method
        says otherwise (SparseGPT's `hessian_dtype` option)."""
        return torch.float32

    @abstractmethod
    def prune_weight(
        self, name: str, weight: torch.Tensor, stat: calibration.Statistic | None, sparsity: float
    ) -> torch.Tensor:
        """Return the prune mask (True = remove) of the float32 (out, in) weight of layer `name`.

        May update the weight in place (SparseGPT reconstructs the kept weights); the base zeroes the mask.
        `self.pattern` says whether the mask must be N:M.
        """

    def _apply(
        self, name: str, module: nn.Module, stats: calibration.StatisticSet | None, sparsity: float,
        result: PruneResult,
    ) -> None:  # fmt: skip
        weight = weight_2d(module)
        # float32 weights are pruned in place; others through a float32 copy (the maths wants float32).
        w32 = weight if weight.dtype == torch.float32 else weight.to(torch.float32)
        dense = w32.clone() if self.refine_stages else w32  # refine stages measure errors against the dense weight
        stat = stats[self.statistic] if stats is not None and self.statistic else None
        mask = self.prune_weight(name, w32, stat, sparsity)
        for stage in self.refine_stages:
            stage_stat = stats[stage.statistic] if stats is not None and stage.statistic else None
            mask = stage.refine(name, w32, dense, mask, stage_stat, sparsity, self.pattern)
        w32.masked_fill_(mask, 0.0)
        if w32 is not weight:
            weight.copy_(w32.to(weight.dtype))
        result.layers[name] = LayerResult(weight.numel(), int((weight == 0).sum()), sparsity)

    def prune(self, model: nn.Module, calib: torch.Tensor | None) -> PruneResult:
        prefix, blocks = find_blocks(model)
        return self.prune_blocks(model, BlockStore(prefix, blocks), calib)

    def _layers(self, store: BlockStore, i: int, block: nn.Module) -> dict[str, nn.Module]:
        return block_linears(block, f"{store.prefix}.{i}", self.cfg.targets, self.cfg.ignore)

    def prune_blocks(self, model: nn.Module, store: BlockStore, calib: torch.Tensor | None) -> PruneResult:
        """The engine: per-block sparsities (uniform, OWL, alpha), then block by block: statistics, prune,
        reconstruct stages, propagate."""
        start = time.perf_counter()
        result = PruneResult(self.name, str(self.pattern), self.sparsity)
        n = len(store)
        if self.needs_calibration and calib is None:
            raise PrunelabError(f"method '{self.name}' needs calibration data")
        device = next(model.parameters()).device
        batch_size = self.cfg.calib_batch(device.type)
        with torch.no_grad():
            sparsities = block_sparsities(
                self.cfg, self.pattern, self.sparsity, model, store, calib, batch_size, self._layers, result
            )
            inputs = None
            if self.statistics or self.reconstruct_stages:
                assert calib is not None
                inputs = calibration.capture_block_inputs(model, store.first, calib, batch_size)
                log.info("captured %d calibration tokens at block 0", inputs.tokens)
            names = self.statistics
            hessian_dtype = self.hessian_dtype(device)

            def make_stat(m: nn.Module) -> calibration.StatisticSet:
                w = weight_2d(m)
                stat = calibration.StatisticSet(names, w.shape[1], w.device, hessian_dtype)
                if stat.hessian_matmul:
                    result.extra["hessian_matmul"] = stat.hessian_matmul
                return stat

            any_layer = False
            for i in progress(range(n), desc=self.name, unit="block"):
                block = store.load(i)
                layers = self._layers(store, i, block)
                any_layer = any_layer or bool(layers)
                stats: dict[str, calibration.Statistic] = {}
                if layers and inputs is not None and names:
                    stats = calibration.collect_statistics(block, layers, inputs, make_stat)
                if inputs is not None:
                    for stage in self.reconstruct_stages:
                        stage.capture(i, block, layers, inputs)  # the dense block, before its layers are pruned
                for name, module in layers.items():
                    if names and name not in stats:
                        result.notes.append(f"{name}: never called on calibration data, left dense")
                        log.warning("%s was never called on calibration data; left dense", name)
                        continue
                    self._apply(name, module, stats.get(name), sparsities[i], result)  # type: ignore[arg-type]
                del stats
                if layers and inputs is not None:
                    for stage in self.reconstruct_stages:
                        stage.reconstruct(i, block, layers, inputs)
                if inputs is not None and i + 1 < n:
                    calibration.run_block(block, inputs, keep_outputs=True)
                store.release(i, block, pruned=True)
        if not any_layer:
            raise PrunelabError("the target/ignore filter selects no layer to prune")
        result.notes.extend(self.notes)
        if self.stages:
            result.extra["stages"] = [stage.record() for stage in self.stages]
        result.seconds = time.perf_counter() - start
        return result
