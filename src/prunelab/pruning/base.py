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
from prunelab.models import block_linears, find_blocks, weight_2d
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


class LayerwisePruner(Pruner):
    """Prune each Linear of each block from one statistic of its inputs.

    `statistic` is None (no calibration), "sq_norm" or "hessian" (see `prunelab.calibration.STATISTICS`).
    """

    statistic: ClassVar[str | None] = None

    @property
    def needs_calibration(self) -> bool:
        return self.statistic is not None

    @abstractmethod
    def prune_weight(self, weight: torch.Tensor, stat: calibration.Statistic | None, sparsity: float) -> torch.Tensor:
        """Return the prune mask (True = remove) of a float32 (out, in) weight.

        May update the weight in place (SparseGPT reconstructs the kept weights); the base zeroes the mask.
        `self.pattern` says whether the mask must be N:M.
        """

    def layer_sparsity(self, name: str) -> float:
        """Sparsity of one layer; uniform here, overridden by non-uniform allocations."""
        return self.sparsity

    def _apply(self, name: str, module: nn.Module, stat: calibration.Statistic | None, result: PruneResult) -> None:
        weight = weight_2d(module)
        # float32 weights are pruned in place; others through a float32 copy (the maths wants float32).
        w32 = weight if weight.dtype == torch.float32 else weight.to(torch.float32)
        sparsity = self.layer_sparsity(name)
        self.current_layer = name
        mask = self.prune_weight(w32, stat, sparsity)
        w32.masked_fill_(mask, 0.0)
        if w32 is not weight:
            weight.copy_(w32.to(weight.dtype))
        result.layers[name] = LayerResult(weight.numel(), int((weight == 0).sum()), sparsity)

    def prune(self, model: nn.Module, calib: torch.Tensor | None) -> PruneResult:
        start = time.perf_counter()
        result = PruneResult(self.name, str(self.pattern), self.sparsity)
        prefix, blocks = find_blocks(model)
        per_block = [block_linears(b, f"{prefix}.{i}", self.cfg.targets, self.cfg.ignore) for i, b in enumerate(blocks)]
        if not any(per_block):
            from prunelab.errors import PrunelabError

            raise PrunelabError("the target/ignore filter selects no layer to prune")
        with torch.no_grad():
            if self.statistic is None:
                for layers in tqdm(per_block, desc=f"{self.name}", unit="block", leave=False):
                    for name, module in layers.items():
                        self._apply(name, module, None, result)
            else:
                self._prune_calibrated(model, blocks, per_block, calib, result)
        result.notes.extend(self.notes)
        result.seconds = time.perf_counter() - start
        return result

    def _prune_calibrated(
        self,
        model: nn.Module,
        blocks: nn.ModuleList,
        per_block: list[dict[str, nn.Module]],
        calib: torch.Tensor | None,
        result: PruneResult,
    ) -> None:
        from prunelab.errors import PrunelabError

        if calib is None:
            raise PrunelabError(f"method '{self.name}' needs calibration data")
        make_stat = calibration.STATISTICS[self.statistic]  # type: ignore[index]
        device = next(model.parameters()).device
        # On a CPU one window per forward is fastest (measured: batching only adds memory traffic).
        batch_size = self.cfg.calib_batch_size or (1 if device.type == "cpu" else 8)
        inputs = calibration.capture_block_inputs(model, blocks[0], calib, batch_size)
        log.info("captured %d calibration tokens at block 0", inputs.tokens)
        for i, (block, layers) in enumerate(
            tqdm(list(zip(blocks, per_block, strict=True)), desc=self.name, unit="block")
        ):
            if layers:
                stats = calibration.collect_statistics(
                    block, layers, inputs, lambda m: make_stat(weight_2d(m).shape[1], weight_2d(m).device)
                )
                for name, module in layers.items():
                    if name not in stats:
                        result.notes.append(f"{name}: never called on calibration data, left dense")
                        log.warning("%s was never called on calibration data; left dense", name)
                        continue
                    self._apply(name, module, stats[name], result)
                del stats
            if i + 1 < len(blocks):
                calibration.run_block(block, inputs, keep_outputs=True)
