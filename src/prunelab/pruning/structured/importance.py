"""Importance scores of structured units, kept apart from the surgery that removes them.

- magnitude: the squared weights a unit owns (gate/up rows and the down column of a channel; q rows and o
  columns of a query head, k/v rows of a key/value group). No calibration.
- activation: what removing the unit takes away from the block output on calibration data, in the spirit of
  Wanda-sp and FLAP: for an input column j of the output projection W (down_proj / o_proj), the removed output is
  W[:, j] x_j, whose expected squared norm is ||W[:, j]||^2 E[x_j^2]. With bias compensation the mean of that
  contribution is put back, so what is lost is the *fluctuation* ||W[:, j]||^2 Var[x_j] (FLAP's metric). A unit's
  score is the sum over the columns it owns; a key/value group scores the sum of its query heads.
- minitron (Muralidharan et al. 2024, "Compact Language Models via Pruning and Knowledge Distillation"): the
  activation alone, without the weight factor above: |x_j| of an output projection's input (the MLP intermediate
  act(gate) * up; a head's slice of the attention output) reduced over each window's tokens (mean, or L2), then
  over the windows (L2, or mean); defaults mean then L2, as NVIDIA Model Optimizer's Minitron pruning does. A
  head scores the L2 norm of its columns' scores, a KV group the L2 norm of its query heads'. Embedding-channel
  (hidden size) scores are not offered: the surgery does not remove hidden channels.
- taylor: first-order Taylor of the loss (taylor.py).
- block-influence (ShortGPT, Men et al. 2024): 1 - cos(input, output) of a whole block, averaged over tokens.

Scores are "higher = keep". The statistic of the output projection's inputs is a running sum and sum of squares
per feature (`MeanVar`), accumulated in float32 by the shared calibration hooks.
"""

from __future__ import annotations

import torch

from prunelab.calibration import BlockInputs, Statistic
from prunelab.models import weight_2d
from prunelab.pruning.structured.surgery import BlockSpec, Part


class MeanVar(Statistic):
    """Per input feature: sum and sum of squares over tokens, giving mean, E[x^2] and variance (FLAP)."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        super().__init__(in_features, device)
        self.sum = torch.zeros(in_features, dtype=torch.float64, device=device)
        self.sum_sq = torch.zeros(in_features, dtype=torch.float64, device=device)

    def add(self, x: torch.Tensor) -> None:
        self.sum += x.sum(dim=0, dtype=torch.float64)
        self.sum_sq += x.double().square().sum(dim=0)
        self.tokens += x.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        return (self.sum / max(self.tokens, 1)).float()

    @property
    def mean_sq(self) -> torch.Tensor:
        return (self.sum_sq / max(self.tokens, 1)).float()

    @property
    def var(self) -> torch.Tensor:
        n = max(self.tokens, 1)
        return (self.sum_sq / n - (self.sum / n).square()).clamp_min(0).float()


class WindowAbs(MeanVar):
    """MeanVar plus Minitron's aggregate: per window, |x_j| reduced over its tokens (`seq`: mean or l2), then
    reduced over windows (`batch`: l2 or mean). Needs whole windows: batches arrive as (windows x seqlen) tokens."""

    def __init__(self, in_features: int, device: torch.device, seqlen: int, seq: str, batch: str) -> None:
        super().__init__(in_features, device)
        self.seqlen, self.seq, self.batch = seqlen, seq, batch
        self.acc = torch.zeros(in_features, dtype=torch.float64, device=device)
        self.windows = 0

    def add(self, x: torch.Tensor) -> None:
        super().add(x)
        a = x.abs().reshape(-1, self.seqlen, x.shape[-1])
        per = a.mean(dim=1) if self.seq == "mean" else a.square().sum(dim=1).sqrt()
        self.acc += (per if self.batch == "mean" else per.square()).sum(dim=0, dtype=torch.float64)
        self.windows += per.shape[0]

    @property
    def aggregate(self) -> torch.Tensor:
        return (self.acc / max(self.windows, 1) if self.batch == "mean" else self.acc.sqrt()).float()


def unit_sums(part: Part, kind: str, n_units: int, per_index: torch.Tensor) -> torch.Tensor:
    """Sum of `per_index` (one value per index along the part's axis) over the indices each unit of `kind` owns."""
    total = torch.zeros(n_units)
    for k, offset, width in part.segments:
        if k == kind:
            total += per_index[offset : offset + n_units * width].reshape(n_units, width).sum(dim=1).cpu()
    return total


def activation_column_scores(part: Part, stat: MeanVar, fluctuation: bool) -> torch.Tensor:
    """||W[:, j]||^2 * (Var[x_j] if fluctuation else E[x_j^2]) per input column j of the output projection."""
    col_sq = weight_2d(part.module).float().square().sum(dim=0)
    return col_sq * (stat.var if fluctuation else stat.mean_sq).to(col_sq.device)


def channel_scores(spec: BlockSpec, how: str, stat: MeanVar | None = None, fluctuation: bool = False) -> torch.Tensor:
    """Score per MLP channel, shape (n_channels,)."""
    if how == "magnitude":
        return sum((p.unit_sq_norms("ch", spec.n_channels) for p in spec.mlp), torch.zeros(spec.n_channels))
    assert stat is not None
    if how == "minitron":
        assert isinstance(stat, WindowAbs)
        return unit_sums(spec.mlp_out, "ch", spec.n_channels, stat.aggregate)
    cols = activation_column_scores(spec.mlp_out, stat, fluctuation)
    return unit_sums(spec.mlp_out, "ch", spec.n_channels, cols)


def head_scores(
    spec: BlockSpec, how: str, stat: MeanVar | None = None, fluctuation: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(score per query head (n_heads,), score per key/value group (n_kv,)); a group includes its query heads."""
    if how == "magnitude":
        q = sum((p.unit_sq_norms("q", spec.n_heads) for p in spec.attn), torch.zeros(spec.n_heads))
        own = sum((p.unit_sq_norms("kv", spec.n_kv) for p in spec.attn), torch.zeros(spec.n_kv))
    elif how == "minitron":
        assert isinstance(stat, WindowAbs)
        q_sq = unit_sums(spec.attn_out, "q", spec.n_heads, stat.aggregate.square())
        return q_sq.sqrt(), q_sq.reshape(spec.n_kv, spec.group_size).sum(dim=1).sqrt()
    else:
        assert stat is not None
        cols = activation_column_scores(spec.attn_out, stat, fluctuation)
        q = unit_sums(spec.attn_out, "q", spec.n_heads, cols)
        own = torch.zeros(spec.n_kv)  # k/v act only through the query heads of their group
    return q, own + q.reshape(spec.n_kv, spec.group_size).sum(dim=1)


def block_influence(inputs: BlockInputs, outputs: list[torch.Tensor]) -> float:
    """ShortGPT's block influence: mean over tokens of 1 - cos(h_in, h_out)."""
    total, tokens = 0.0, 0
    for h_in, h_out in zip(inputs.hidden, outputs, strict=True):
        a, b = h_in.reshape(-1, h_in.shape[-1]).float(), h_out.reshape(-1, h_out.shape[-1]).float()
        total += float((1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)).sum())
        tokens += a.shape[0]
    return total / max(tokens, 1)
