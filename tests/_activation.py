"""Setup shared by the activation-sparsity tests (test_activation_sparsity, test_activation_greedy_time): the
calibration token ids and the two-layer toy model whose layers read equal but separate inputs."""

from __future__ import annotations

import torch
from torch import nn

from .conftest import VOCAB


def calib_ids(n: int = 4, length: int = 32, seed: int = 1) -> torch.Tensor:
    """Random token ids (n, length), the same for a given seed."""
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


class TwoLayerBlock(nn.Module):
    """h + a(h / 2) + fold(b(h / 2)): layer a is width -> width, layer b width -> widen x width, its output's
    width-sized chunks summed (fold). Both read equal but separate tensors, so only their weights (and, with
    widen > 1, their shapes: a cost table can tell them apart) differ."""

    def __init__(self, width: int, widen: int = 1) -> None:
        super().__init__()
        self.a = nn.Linear(width, width, bias=False)
        self.b = nn.Linear(width, widen * width, bias=False)

    def forward(self, h: torch.Tensor, **_: object) -> torch.Tensor:
        y, width = self.b(h * 0.5), h.shape[-1]
        out = h + self.a(h * 0.5)
        for start in range(0, y.shape[-1], width):  # chunk by chunk, left to right: the same float sums throughout
            out = out + y[..., start : start + width]
        return out


class TwoLayerModel(nn.Module):
    """An embedding and two `TwoLayerBlock`s under `model.layers` (where calibration looks), seeded weights."""

    def __init__(self, width: int, widen: int = 1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, width)
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([TwoLayerBlock(width, widen) for _ in range(2)])

    def forward(self, input_ids: torch.Tensor, **_: object) -> torch.Tensor:
        h = self.embed(input_ids)
        for block in self.model.layers:
            h = block(h)
        return h
