"""Where decoder blocks come from: the model in memory, or (`prunelab.streaming`) the checkpoint on disk."""

from __future__ import annotations

from torch import nn


class BlockStore:
    """Where decoder blocks come from. Here: the model in memory. `prunelab.streaming` subclasses it to load one
    block at a time from the checkpoint and write it out after pruning, so the engine serves both."""

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
