"""Stages any layer-wise method can run besides its own score, so a refinement is written once, not per method.

- A *refine* stage runs after a method chose a layer's mask and before the weights are zeroed:
  (layer name, float32 weight as the method left it, the dense weight, mask, the stage's statistic, sparsity,
  pattern) -> a new mask (e.g. DSnoT's training-free mask swaps). It must keep the count and the pattern the method
  promised; it may set weights it revives in place.
- A *reconstruct* stage sees each block twice: `capture` before its layers are pruned (e.g. the dense outputs it
  will match) and `reconstruct` once they are, before the block's outputs are propagated to the next block,
  updating kept weights in place (pruned weights stay zero).

A stage is one class in its own module plus one line in `prunelab.pruning.STAGES`; `PruneConfig.stages` (or
`make_pruner(cfg, stages=[...])`) hands it to the engine (`LayerwisePruner.prune_blocks`). The settings a stage
reads are `PruneConfig` fields, listed once in `config.prune.STAGE_SETTINGS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from prunelab.calibration import BlockInputs, Statistic
from prunelab.config.pattern import Pattern
from prunelab.config.prune import STAGE_SETTINGS, PruneConfig
from prunelab.pruning import STAGES

__all__ = ["STAGES", "ReconstructStage", "RefineStage", "Stage", "make_stages"]


class Stage(ABC):
    name: ClassVar[str]
    summary: ClassVar[str] = ""
    statistic: ClassVar[str | None] = None  # a `calibration.STATISTICS` name the engine collects for the stage

    def __init__(self, cfg: PruneConfig) -> None:
        self.cfg = cfg
        self.results: dict[str, Any] = {}  # what the stage did (counts, losses), copied into the prune report

    @property
    def needs_calibration(self) -> bool:
        return self.statistic is not None

    def record(self) -> dict[str, Any]:
        """The stage with the settings it read and what it did (the prune report's `stages`)."""
        settings = {f: getattr(self.cfg, f) for f in STAGE_SETTINGS.get(self.name, ())}
        return {"name": self.name, **settings, **self.results}


class RefineStage(Stage):
    @abstractmethod
    def refine(
        self, name: str, weight: torch.Tensor, dense: torch.Tensor, mask: torch.Tensor, stat: Statistic | None,
        sparsity: float, pattern: Pattern,
    ) -> torch.Tensor:  # fmt: skip
        """A new prune mask (True = remove) for `weight`, given the method's `mask` and the `dense` weight."""


class ReconstructStage(Stage):
    @property
    def needs_calibration(self) -> bool:
        return True  # it runs the block on the calibration inputs

    def capture(self, index: int, block: nn.Module, layers: dict[str, nn.Module], inputs: BlockInputs) -> None:
        """Called before the block's layers are pruned (the block is still dense), for every block in order, also
        one with no selected layer (`layers` empty), so a stage may carry state along the dense model."""

    @abstractmethod
    def reconstruct(self, index: int, block: nn.Module, layers: dict[str, nn.Module], inputs: BlockInputs) -> None:
        """Update the pruned block's kept weights in place (masks must stay zero)."""


def make_stages(names: Sequence[str], cfg: PruneConfig) -> tuple[list[RefineStage], list[ReconstructStage]]:
    """The named stages, split by where the engine runs them (unknown names: did-you-mean error)."""
    refine: list[RefineStage] = []
    reconstruct: list[ReconstructStage] = []
    for name in names:
        stage = STAGES.lookup(name)(cfg)
        if isinstance(stage, RefineStage):
            refine.append(stage)
        elif isinstance(stage, ReconstructStage):
            reconstruct.append(stage)
        else:
            raise TypeError(f"stage '{name}' is neither a refine nor a reconstruct stage")
    return refine, reconstruct
