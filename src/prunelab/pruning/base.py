"""The one interface every method implements, and the layer-wise base most methods share.

`Pruner.prune(model, calib) -> PruneResult` is the whole contract. `LayerwisePruner` owns the block loop, the
hooks and the propagation of pruned outputs (see `prunelab.calibration`); a subclass only names the statistic it
needs (`statistic`) and says how it prunes one weight matrix (`prune_weight`). The pattern (unstructured or N:M)
and the per-layer sparsity are handled here, so every layer-wise method honours them.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from tqdm.auto import tqdm

from prunelab import calibration
from prunelab.config import PruneConfig, build
from prunelab.models import block_linears, check_filters, find_blocks, weight_2d
from prunelab.pruning.masks import Pattern

log = logging.getLogger(__name__)


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


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

    @property
    def achieved_sparsity(self) -> float:
        numel = sum(r.numel for r in self.layers.values())
        return sum(r.zeros for r in self.layers.values()) / numel if numel else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
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
    """A pruning method. Subclasses set `name`, `summary`, `Options` and implement `prune`."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, cfg: PruneConfig) -> None:
        check_filters(cfg.targets, "targets")
        check_filters(cfg.ignore, "ignore")
        self.cfg = cfg
        self.notes: list[str] = []  # things a user should know, copied into the result (e.g. raised dampening)
        self.pattern: Pattern = cfg.pattern_obj
        self.sparsity = cfg.resolved_sparsity()
        self.options: Any = build(self.Options, cfg.options, f"options for method '{self.name}'")  # type: ignore[arg-type]

    @property
    def needs_calibration(self) -> bool:
        """Whether `prune` needs calibration token windows."""
        return True

    @abstractmethod
    def prune(self, model: nn.Module, calib: torch.Tensor | None) -> PruneResult:
        """Prune `model` in place; `calib` is (n, L) token ids, or None when the method needs none."""


class BlockStore:
    """Where decoder blocks come from. Here: the model in memory. `prunelab.streaming` subclasses it to load one
    block at a time from the checkpoint and write it out after pruning, so the engine below serves both."""

    def __init__(self, prefix: str, blocks: nn.ModuleList) -> None:
        self.prefix = prefix
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def first(self) -> nn.Module:
        """The module whose inputs are captured (never run by the capture)."""
        return self.blocks[0]

    def load(self, i: int) -> nn.Module:
        return self.blocks[i]

    def release(self, i: int, block: nn.Module, pruned: bool) -> None:
        """Called once block i is done (pruned or, in the OWL pre-pass, only read)."""


class LayerwisePruner(Pruner):
    """Prune each Linear of each block from one statistic of its inputs.

    `statistic` is None (no calibration), "sq_norm" or "hessian" (see `prunelab.calibration.STATISTICS`).
    """

    statistic: ClassVar[str | None] = None

    @property
    def needs_calibration(self) -> bool:
        return self.statistic is not None or self.cfg.allocation == "owl"

    @abstractmethod
    def prune_weight(self, weight: torch.Tensor, stat: calibration.Statistic | None, sparsity: float) -> torch.Tensor:
        """Return the prune mask (True = remove) of a float32 (out, in) weight.

        May update the weight in place (SparseGPT reconstructs the kept weights); the base zeroes the mask.
        `self.pattern` says whether the mask must be N:M.
        """

    def _apply(
        self, name: str, module: nn.Module, stat: calibration.Statistic | None, sparsity: float, result: PruneResult
    ) -> None:
        weight = weight_2d(module)
        # float32 weights are pruned in place; others through a float32 copy (the maths wants float32).
        w32 = weight if weight.dtype == torch.float32 else weight.to(torch.float32)
        self.current_layer = name
        mask = self.prune_weight(w32, stat, sparsity)
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
        """The engine: optional OWL pre-pass, then block by block: statistics, prune, propagate."""
        from prunelab.errors import PrunelabError
        from prunelab.pruning.allocation import owl_allocation, owl_outlier_ratios

        start = time.perf_counter()
        result = PruneResult(self.name, str(self.pattern), self.sparsity)
        n = len(store)
        if self.needs_calibration and calib is None:
            raise PrunelabError(f"method '{self.name}' needs calibration data")
        device = next(model.parameters()).device
        # On a CPU one window per forward is fastest (measured: batching only adds memory traffic).
        batch_size = self.cfg.calib_batch_size or (1 if device.type == "cpu" else 8)
        sparsities = [self.sparsity] * n
        with torch.no_grad():
            if self.cfg.allocation == "owl":
                if self.pattern.is_nm:
                    result.notes.append("OWL keeps N:M patterns uniform: every layer must satisfy the same N:M")
                else:
                    assert calib is not None
                    inputs = calibration.capture_block_inputs(model, store.first, calib, batch_size)
                    ratios, sizes = owl_outlier_ratios(store, inputs, self._layers, self.cfg.owl_m)
                    sparsities = owl_allocation(ratios, sizes, self.sparsity, self.cfg.owl_lambda)
                    result.extra["owl_outlier_ratios"] = ratios
            result.extra["allocation"] = {"kind": self.cfg.allocation, "block_sparsity": sparsities}
            inputs = None
            if self.statistic is not None:
                assert calib is not None
                inputs = calibration.capture_block_inputs(model, store.first, calib, batch_size)
                log.info("captured %d calibration tokens at block 0", inputs.tokens)
            make_stat = calibration.STATISTICS[self.statistic] if self.statistic else None
            any_layer = False
            for i in tqdm(range(n), desc=self.name, unit="block"):
                block = store.load(i)
                layers = self._layers(store, i, block)
                any_layer = any_layer or bool(layers)
                stats: dict[str, calibration.Statistic] = {}
                if layers and inputs is not None and make_stat is not None:
                    stats = calibration.collect_statistics(
                        block, layers, inputs, lambda m: make_stat(weight_2d(m).shape[1], weight_2d(m).device)
                    )
                for name, module in layers.items():
                    if make_stat is not None and name not in stats:
                        result.notes.append(f"{name}: never called on calibration data, left dense")
                        log.warning("%s was never called on calibration data; left dense", name)
                        continue
                    self._apply(name, module, stats.get(name), sparsities[i], result)
                del stats
                if inputs is not None and i + 1 < n:
                    calibration.run_block(block, inputs, keep_outputs=True)
                store.release(i, block, pruned=True)
        if not any_layer:
            raise PrunelabError("the target/ignore filter selects no layer to prune")
        result.notes.extend(self.notes)
        result.seconds = time.perf_counter() - start
        return result
