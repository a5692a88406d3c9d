"""Input-channel permutation for N:M masks (RIA's channel reallocation), kept exact by mirroring it upstream.

Why: an N:M mask keeps N of every M *consecutive* inputs of a row, so where important channels sit next to each
other some are lost. Reordering the input channels first spreads them over the groups (Zhang et al. 2024): sort
channels by their summed score and deal them into the groups in a snake order, optionally refined group column
by group column with a linear sum assignment.

A permutation of a layer's inputs changes the model's function unless the same permutation is applied where those
inputs come from (a `Mirror`). Two places allow that exactly, and both sides are permuted in place there, so the
stored model computes the same function, loads in plain transformers and is N:M in its stored layout:
- the MLP output projection (down_proj / fc2 / c_proj reads act(gate) * up, or act(fc1)): its channels are the
  producing rows (gate/up, gate_up, fc1, c_fc, with their biases); any order.
- the attention output projection (o_proj): its inputs are each query head's attention-weighted values, so only
  an order within a head, mirrored on that key/value head's value rows and shared by the query heads of a GQA
  group.
Inputs taken from the residual stream (q/k/v, gate/up: a whole-model change through every norm and the
embeddings) are left in order, with plain N:M groups.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.calibration import Statistic, StatisticSet
from prunelab.config.pattern import Pattern
from prunelab.errors import PrunelabError
from prunelab.models import weight_2d
from prunelab.pruning.masks import nm_mask
from prunelab.pruning.structured.surgery import Axis, Part, axis_dim, block_spec, mlp_parts

# Elements of the (rows, chunk of groups, groups) tensor the assignment's value matrix is built from at once.
_LSA_CHUNK = 1 << 25


def kept_score(scores: torch.Tensor, pattern: Pattern) -> float:
    """Total score an N:M mask keeps for `scores` in their current column order (what a permutation maximises)."""
    return float(scores.masked_fill(nm_mask(scores, pattern), 0.0).sum())


def deal_channels(scores: torch.Tensor, m: int) -> torch.Tensor:
    """The paper's heuristic: channels sorted by summed score, split into M quantiles; group g takes the g-th
    channel of each quantile, walking every other quantile backwards so each group gets a balanced mix."""
    order = scores.sum(dim=0).argsort(stable=True)
    chunks = order.view(m, -1).clone()
    chunks[1::2] = chunks[1::2].flip(1)
    return chunks.t().reshape(-1)  # position g*M + r <- channel chunks[r, g]


def _lsa_step(scores: torch.Tensor, order: torch.Tensor, pattern: Pattern, c: int) -> torch.Tensor:
    """Reassign column c of every group: value[r, g] = score kept by group r with its c-th channel replaced by
    group g's c-th channel; the assignment maximising the total is optimal for this column, others fixed.

    The N kept of group r's other M-1 channels (sorted b_1 >= b_2 >= ...) plus a candidate v sum to
    b_1 + ... + b_{N-1} + max(v, b_N) per row, so no top-k over every pair of groups is needed.
    """
    from scipy.optimize import linear_sum_assignment

    m, n = pattern.m, pattern.n
    s = scores[:, order].view(scores.shape[0], -1, m)  # (rows, groups, M)
    rows, groups, _ = s.shape
    others = s[:, :, [j for j in range(m) if j != c]].sort(dim=-1, descending=True).values  # (rows, groups, M-1)
    top = others[:, :, : n - 1].sum(dim=(0, 2))  # (groups,): what group r keeps whatever the candidate
    nth = others[:, :, n - 1]  # (rows, groups)
    cand = s[:, :, c]  # (rows, groups)
    value = torch.empty(groups, groups, dtype=torch.float64)
    step = max(1, _LSA_CHUNK // max(1, rows * groups))
    for a in range(0, groups, step):
        kept = torch.maximum(cand[:, None, :], nth[:, a : a + step, None]).sum(0)  # (chunk, groups)
        value[a : a + step] = (kept + top[a : a + step, None]).double().cpu()
    _, col = linear_sum_assignment(value.numpy(), maximize=True)
    new_order = order.clone()
    slots = torch.arange(groups, device=order.device) * m + c
    new_order[slots] = order[torch.as_tensor(col, dtype=torch.long, device=order.device) * m + c]
    return new_order


def channel_permutation(scores: torch.Tensor, pattern: Pattern, lsa: bool = False) -> torch.Tensor | None:
    """The input order (new column i = old column order[i]) that keeps the most score under the N:M mask, or
    None when no candidate beats the original order (the heuristic is not guaranteed to help)."""
    cols = scores.shape[1]
    if cols % pattern.m:
        raise PrunelabError(f"pattern {pattern} needs the input size ({cols}) to be a multiple of {pattern.m}")
    order = deal_channels(scores, pattern.m)
    if lsa:
        try:
            import scipy.optimize  # noqa: F401
        except ImportError as exc:
            raise PrunelabError("permute=lsa needs scipy: pip install 'prunelab[lsa]'") from exc
        for c in range(pattern.m):
            order = _lsa_step(scores, order, pattern, c)
    return order if kept_score(scores[:, order], pattern) > kept_score(scores, pattern) else None


def permute_statistic(stat: Statistic, order: torch.Tensor) -> Statistic:
    """A copy of `stat` in the new input order, so the mask and any refine stage see statistics that match the
    permuted weight. Per-input vectors are reindexed, (in, in) matrices (X^T X, E[xx^T]) on both axes, and a
    StatisticSet part by part (parts shared between names stay shared); any other tensor is refused rather than
    left in the old order (a statistic that grows a field must say how it permutes)."""
    if isinstance(stat, StatisticSet):
        done: dict[int, Statistic] = {}
        out_set = copy.copy(stat)
        out_set.parts = {}
        for name, part in stat.parts.items():
            if id(part) not in done:
                done[id(part)] = permute_statistic(part, order)
            out_set.parts[name] = done[id(part)]
        out_set._unique = list(done.values())
        return out_set
    out = copy.copy(stat)
    n = stat.in_features
    for key, value in vars(stat).items():
        if not isinstance(value, torch.Tensor):
            continue
        idx = order.to(value.device)
        if value.shape == (n,):
            setattr(out, key, value[idx])
        elif value.shape == (n, n):
            setattr(out, key, value[idx][:, idx])
        else:
            raise TypeError(f"cannot permute {type(stat).__name__}.{key} of shape {tuple(value.shape)}")
    return out


def _permute_axis(module: nn.Module, axis: Axis, idx: torch.Tensor) -> None:
    """Reorder `axis` of a Linear / Conv1D in place (weights keep their identity; an output bias follows)."""
    w = module.weight.data
    w.copy_(w.index_select(axis_dim(module, axis), idx.to(w.device)))
    bias = getattr(module, "bias", None)
    if axis == "out" and bias is not None:
        bias.data.copy_(bias.data.index_select(0, idx.to(bias.device)))


class Mirror(ABC):
    """A layer whose input order can be changed exactly: `choose` an order, `apply` it here and upstream."""

    @abstractmethod
    def choose(self, scores: torch.Tensor, pattern: Pattern, lsa: bool) -> torch.Tensor | None:
        """A full input order (new column i = old column order[i]) for `scores`, or None to keep the order."""

    @abstractmethod
    def apply(self, order: torch.Tensor) -> None:
        """Permute the layer's inputs and its producers' outputs by `order`, in place."""


@dataclass
class MlpMirror(Mirror):
    """The MLP output projection: its input channels are the producing rows (gate/up, gate_up, fc1, c_fc)."""

    parts: list[Part]  # producers first, the output projection last

    def choose(self, scores: torch.Tensor, pattern: Pattern, lsa: bool) -> torch.Tensor | None:
        return channel_permutation(scores, pattern, lsa)

    def apply(self, order: torch.Tensor) -> None:
        for part in self.parts:
            _permute_axis(part.module, part.axis, part.indices({"ch": order.tolist()}))


@dataclass
class AttentionMirror(Mirror):
    """The attention output projection: its inputs are, per query head, that head's attention-weighted values,
    so only an order within a head is exact, mirrored on the rows of its key/value head; with GQA every query
    head of a group must share it (chosen from the group's stacked scores)."""

    values: Part  # v_proj rows, or the fused qkv / c_attn rows (the value segment is the last one)
    out: Part
    n_heads: int
    n_kv: int
    head_dim: int

    def choose(self, scores: torch.Tensor, pattern: Pattern, lsa: bool) -> torch.Tensor | None:
        d, per_group = self.head_dim, self.n_heads // self.n_kv
        if d % pattern.m:
            return None  # N:M groups straddle heads: no order within heads keeps them whole
        heads = scores.reshape(scores.shape[0], self.n_heads, d)
        order = torch.arange(self.n_heads * d, device=scores.device).view(self.n_heads, d)
        changed = False
        for g in range(self.n_kv):
            stacked = heads[:, g * per_group : (g + 1) * per_group].transpose(0, 1).reshape(-1, d)
            sigma = channel_permutation(stacked, pattern, lsa)
            if sigma is not None:
                order[g * per_group : (g + 1) * per_group] = order[g * per_group : (g + 1) * per_group, sigma]
                changed = True
        return order.reshape(-1) if changed else None

    def apply(self, order: torch.Tensor) -> None:
        d, per_group = self.head_dim, self.n_heads // self.n_kv
        _permute_axis(self.out.module, self.out.axis, order)
        sigma = order.view(self.n_heads, d)[::per_group] % d  # (n_kv, d): each group's order within a head
        _kind, offset, _width = self.values.segments[-1]  # the value rows (last segment of a fused qkv)
        rows = torch.arange(weight_2d(self.values.module).shape[0], device=order.device)
        first = offset + torch.arange(self.n_kv, device=order.device).unsqueeze(1) * d
        rows[offset : offset + self.n_kv * d] = (first + sigma).reshape(-1)
        _permute_axis(self.values.module, self.values.axis, rows)


# Children an attention module may have besides its projections without touching the values' channels.
_ATTENTION_CHILDREN = {"q_norm", "k_norm", "rotary_emb", "attn_dropout", "resid_dropout", "dropout"}


def find_mirror(block: nn.Module, module: nn.Module) -> Mirror | None:
    """How `module`'s input order can be mirrored exactly in `block`, or None (e.g. residual-stream inputs)."""
    found = mlp_parts(block)
    if found is not None and found[1][-1].module is module:
        return MlpMirror(found[1])
    attn = next((getattr(block, n) for n in ("self_attn", "attn", "attention") if hasattr(block, n)), None)
    config = getattr(attn, "config", None)
    if attn is None or config is None:
        return None
    try:
        spec = block_spec(block, config)
    except PrunelabError:
        return None
    known = {p.attr for p in spec.attn} | _ATTENTION_CHILDREN  # anything else might act on the values' channels
    if spec.attn_out.module is not module or any(n not in known for n, _ in attn.named_children()):
        return None
    values = spec.attn[2] if len(spec.attn) == 4 else spec.attn[0]
    return AttentionMirror(values, spec.attn_out, spec.n_heads, spec.n_kv, spec.head_dim)
