"""RIA (Zhang et al., ICLR 2024): score (|W_ij| / sum_k |W_kj| + |W_ij| / sum_k |W_ik|) * ||X_j||_2^a, per row.

The two relative terms normalise a weight by its input column (over outputs) and by its output row (over inputs),
so a weight in a column of small weights is kept even when its magnitude is modest, where Wanda would drop it.
Ranked within each output row by default; `scope=layer` ranks the whole matrix, as the reference code does unless
given `--per_outneuron`. For N:M the input channels may first be reordered (`permute`, see
`prunelab.pruning.permute`): only where the order can be mirrored on the producing layer, so the stored model is
exact, loadable and N:M as stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from prunelab.calibration import SquaredNorm, Statistic, StatisticSet
from prunelab.config.methods import RiaOptions
from prunelab.config.prune import PruneConfig
from prunelab.models import weight_2d
from prunelab.pruning.base import Capabilities, LayerwisePruner, PruneResult
from prunelab.pruning.blocks import BlockStore
from prunelab.pruning.masks import nm_mask, per_layer_mask, per_row_mask
from prunelab.pruning.permute import find_mirror, permute_statistic


def ria_scores(weight: torch.Tensor, norm: torch.Tensor, alpha: float) -> torch.Tensor:
    """The RIA score of a float (out, in) weight given ||X_j||_2 per input (an all-zero column or row scores 0)."""
    a = weight.abs()
    tiny = torch.finfo(a.dtype).tiny
    relative = a / a.sum(dim=0, keepdim=True).clamp_min(tiny) + a / a.sum(dim=1, keepdim=True).clamp_min(tiny)
    return relative * norm.pow(alpha).unsqueeze(0)


class RIA(LayerwisePruner):
    name = "ria"
    summary = "relative importance x activation^a per output row; N:M with channel permutation (Zhang et al. 2024)"
    Options = RiaOptions
    capabilities = Capabilities(comparison_group="row", takes_stages=True)
    statistic = "sq_norm"

    @property
    def caps(self) -> Capabilities:
        caps = super().caps
        return replace(caps, comparison_group="layer") if self.options.scope == "layer" else caps

    def __init__(self, cfg: PruneConfig, stages: Sequence[str] = ()) -> None:
        super().__init__(cfg, stages)
        self.permutations: dict[str, torch.Tensor] = {}  # layer -> input order applied (new col i = old order[i])
        self._block: nn.Module | None = None

    def _layers(self, store: BlockStore, i: int, block: nn.Module) -> dict[str, nn.Module]:
        self._block = block  # the permutation mirrors onto this block's producing layers
        return super()._layers(store, i, block)

    def _apply(
        self, name: str, module: nn.Module, stat: Statistic | None, sparsity: float, result: PruneResult
    ) -> None:
        # Permute before the mask is chosen, so the mask, any refine stage and the zeroing see one plain layout.
        if self.pattern.is_nm and self.options.permute and self._block is not None and stat is not None:
            stat = self._permute(name, module, stat)
        super()._apply(name, module, stat, sparsity, result)

    def _permute(self, name: str, module: nn.Module, stat: Statistic) -> Statistic:
        assert self._block is not None
        norm = stat[self.statistic] if isinstance(stat, StatisticSet) else stat
        assert isinstance(norm, SquaredNorm)
        mirror = find_mirror(self._block, module)
        if mirror is None:
            return stat
        scores = ria_scores(weight_2d(module).float(), norm.norm, self.options.alpha)
        order = mirror.choose(scores, self.pattern, lsa=self.options.permute == "lsa")
        if order is None:
            return stat
        mirror.apply(order)
        self.permutations[name] = order
        return permute_statistic(stat, order)

    def prune_weight(self, name: str, weight: torch.Tensor, stat: Statistic | None, sparsity: float) -> torch.Tensor:
        assert isinstance(stat, SquaredNorm)
        scores = ria_scores(weight, stat.norm, self.options.alpha)
        if self.pattern.is_nm:
            return nm_mask(scores, self.pattern)
        return per_row_mask(scores, sparsity) if self.options.scope == "row" else per_layer_mask(scores, sparsity)

    def prune_blocks(self, model: nn.Module, store: BlockStore, calib: torch.Tensor | None) -> PruneResult:
        self.permutations = {}
        result = super().prune_blocks(model, store, calib)
        self._block = None
        if self.pattern.is_nm and self.options.permute:
            result.extra["ria_permuted_layers"] = list(self.permutations)
            result.notes.append(
                f"ria: input channels of {len(self.permutations)} output projection(s) permuted, mirrored on the "
                "producing rows (same function, N:M as stored); layers reading the residual stream keep plain N:M"
            )
        return result
