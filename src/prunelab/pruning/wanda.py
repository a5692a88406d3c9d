"""Wanda (Sun et al., 2023): score |W_ij| * ||X_j||_2, compared within each output row.

The norm is over all calibration tokens of input feature j (not squared: a squared norm ranks differently across
columns and is a classic mistake). With an N:M pattern the comparison group is each group of M inputs of a row.
"""

from __future__ import annotations

import torch

from prunelab.calibration import SquaredNorm, Statistic
from prunelab.pruning.base import Capabilities, LayerwisePruner
from prunelab.pruning.masks import nm_mask, per_row_mask


class Wanda(LayerwisePruner):
    name = "wanda"
    summary = "|W| x input-activation norm, ranked per output row (Sun et al. 2023)"
    capabilities = Capabilities(comparison_group="row", takes_stages=True)
    statistic = "sq_norm"

    def prune_weight(self, name: str, weight: torch.Tensor, stat: Statistic | None, sparsity: float) -> torch.Tensor:
        assert isinstance(stat, SquaredNorm)
        scores = weight.abs() * stat.norm.unsqueeze(0)  # (out, in) * (1, in)
        return nm_mask(scores, self.pattern) if self.pattern.is_nm else per_row_mask(scores, sparsity)
