"""Input-channel permutation for N:M masks (RIA's channel reallocation), kept exact by mirroring it upstream.

Why: an N:M mask keeps N of every M *consecutive* inputs of a row, so where important channels sit next to each
other some are lost. Reordering the input channels first spreads them over the groups (Zhang et al. 2024): sort
channels by their summed score and deal them into the groups in a snake order, optionally refined group column
by group column with a linear sum assignment.

A permutation of a layer's inputs changes the model's function unless the same permutation is applied where those
inputs come from. That is exact only where the inputs are the outputs of another layer through element-wise
operations: the MLP output projection (down_proj / fc2 / c_proj reads act(gate) * up, or act(fc1)), whose
channels are the producing rows (gate/up/fc1, with their biases). There both sides are permuted in place, so the
stored model computes the same function, loads in plain transformers, and is N:M in its stored layout. Inputs
taken from the residual stream (q/k/v, gate/up) or from attention heads (o_proj) are left in order.
"""

from __future__ import annotations

import torch
from torch import nn

from prunelab.config.pattern import Pattern
from prunelab.errors import PrunelabError
from prunelab.pruning.masks import nm_mask
from prunelab.pruning.structured.surgery import Part, axis_dim, mlp_parts

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


def mirrored_parts(block: nn.Module, module: nn.Module) -> list[Part] | None:
    """The parts whose channels are `module`'s inputs (producers first, `module` last) when `module` is the MLP
    output projection of `block`, else None: no exact mirror exists."""
    found = mlp_parts(block)
    if found is None or found[1][-1].module is not module:
        return None
    return found[1]


def permute_parts(parts: list[Part], order: torch.Tensor) -> None:
    """Apply one channel order to every part, in place (weights keep their identity; output biases follow)."""
    for part in parts:
        idx = part.indices({"ch": order.tolist()})
        module = part.module
        w = module.weight.data
        w.copy_(w.index_select(axis_dim(module, part.axis), idx.to(w.device)))
        bias = getattr(module, "bias", None)
        if part.axis == "out" and bias is not None:
            bias.data.copy_(bias.data.index_select(0, idx.to(bias.device)))
