"""Stages any layer-wise method can run besides its own score: the seam later methods plug into.

- A *refine* stage runs after a method chose a layer's mask and before the weights are zeroed:
  (layer name, float32 weight, mask, statistic, sparsity, pattern) -> a new mask (e.g. DSnoT's training-free
  mask swaps). It must keep the count and the pattern the method promised.
- A *reconstruct* stage runs once all layers of a block are pruned, before the block's outputs are propagated to
  the next block: (block index, block, its pruned layers, the block's calibration inputs), updating weights in
  place (e.g. a block-level least-squares reconstruction).

None is implemented yet, so `STAGES` is empty; a stage is one class here or in its own module plus one registry
line, and `make_pruner(cfg, stages=[name, ...])` hands it to the engine (`LayerwisePruner.prune_blocks`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from prunelab.calibration import BlockInputs, Statistic
from prunelab.config.pattern import Pattern
from prunelab.config.prune import PruneConfig
from prunelab.registry import Registry


class Stage(ABC):
    name: ClassVar[str]
    summary: ClassVar[str] = ""

    def __init__(self, cfg: PruneConfig) -> None:
        self.cfg = cfg


class RefineStage(Stage):
    @abstractmethod
    def refine(
        self, name: str, weight: torch.Tensor, mask: torch.Tensor, stat: Statistic | None, sparsity: float,
        pattern: Pattern,
    ) -> torch.Tensor:  # fmt: skip
        """A new prune mask (True = remove) for `weight`, given the method's `mask`."""


class ReconstructStage(Stage):
    @abstractmethod
    def reconstruct(self, index: int, block: nn.Module, layers: dict[str, nn.Module], inputs: BlockInputs) -> None:
        """Update the pruned block's kept weights in place (masks must stay zero)."""


STAGES: Registry[type[Stage]] = Registry("stage", {})


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
