"""First-order Taylor importance of structured units (LLM-Pruner, Ma et al. 2023).

Why: activation and magnitude scores look at one block in isolation; the gradient of the next-token loss says
what a unit is worth to the *model's output*. Zeroing a unit's weights w changes the loss by about -g . w, so:

- element (LLM-Pruner's `param_first`, the default of its scripts): sum over the unit's weights of |g_i w_i|;
- vector (LLM-Pruner's `vectorize`): sum over the unit's weight vectors (one row or column of a projection)
  of |g . w| of that vector: signed contributions inside a vector may cancel.

A unit owns the same weights as in magnitude scoring (gate/up rows + down column; q rows + o columns of a query
head; k/v rows of a KV group, whose score adds its query heads'). Biases are not scored (as in LLM-Pruner).
A decoder layer owns every parameter of its block; zeroing all of them makes the block the identity on the
residual stream, so its `vector` score is |sum g . w| over the block: the first-order loss change of dropping it.

g is the gradient of the mean next-token loss over all calibration windows, accumulated batch by batch in
float32; only decoder-block parameters get gradients (embeddings and lm_head stay frozen). Memory: the model,
one float32 gradient per block parameter (SmolLM2-135M: ~0.4 GiB) and the activations of one batch's backward.
`requires_grad`, train/eval mode and `.grad` are restored afterwards.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from prunelab._util import progress
from prunelab.models import find_blocks
from prunelab.pruning.structured.importance import unit_sums
from prunelab.pruning.structured.surgery import BlockSpec, Part

log = logging.getLogger(__name__)

Grads = dict[int, torch.Tensor]  # id(parameter) -> float32 gradient of the mean loss


def gradients(model: nn.Module, calib: torch.Tensor, batch_size: int) -> Grads:
    """Gradient of the mean next-token loss over `calib` (n, L) for every decoder-block parameter, float32."""
    _, blocks = find_blocks(model)
    wanted = {id(p): p for b in blocks for p in b.parameters()}
    saved = [(p, p.requires_grad) for p in model.parameters()]
    was_training, device, n = model.training, next(model.parameters()).device, calib.shape[0]
    grads: Grads = {}
    try:
        model.eval()  # no dropout: the scores are a property of the model, not of a random mask
        for p, _ in saved:
            p.requires_grad_(id(p) in wanted)
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            for start in progress(range(0, n, batch_size), desc="taylor gradients", unit="batch"):
                batch = calib[start : start + batch_size].to(device)
                loss = model(input_ids=batch, labels=batch, use_cache=False).loss * (batch.shape[0] / n)
                loss.backward()
                for key, p in wanted.items():
                    if p.grad is not None:
                        g = p.grad.float()  # a float32 parameter's own gradient: no copy
                        grads[key] = g if key not in grads else grads[key].add_(g)
                        p.grad = None
    finally:
        model.zero_grad(set_to_none=True)
        for p, flag in saved:
            p.requires_grad_(flag)
        model.train(was_training)
    return grads


def _salience(part: Part, grads: Grads) -> torch.Tensor:
    """g * w of a part's weight, rows along the part's axis (float32)."""
    w = part.module.weight
    g = grads.get(id(w))
    s = torch.zeros(w.shape, device=w.device) if g is None else g * w.detach().float()
    if isinstance(part.module, Conv1D):  # stored (in, out)
        s = s.t()
    return s.t() if part.axis == "in" else s


def _per_vector(s: torch.Tensor, mode: str) -> torch.Tensor:
    return s.abs().sum(dim=1) if mode == "element" else s.sum(dim=1).abs()


def unit_scores(spec: BlockSpec, grads: Grads, mode: str) -> dict[str, torch.Tensor]:
    """Scores of one block's units: "ch" (n_channels,), "q" (n_heads,), "kv" (n_kv,) including its query heads."""
    out = {"ch": torch.zeros(spec.n_channels), "q": torch.zeros(spec.n_heads), "kv": torch.zeros(spec.n_kv)}
    for part in spec.mlp:
        out["ch"] += unit_sums(part, "ch", spec.n_channels, _per_vector(_salience(part, grads), mode))
    for part in spec.attn:
        per = _per_vector(_salience(part, grads), mode)
        out["q"] += unit_sums(part, "q", spec.n_heads, per)
        out["kv"] += unit_sums(part, "kv", spec.n_kv, per)
    out["kv"] += out["q"].reshape(spec.n_kv, spec.group_size).sum(dim=1)
    return out


def layer_score(block: nn.Module, grads: Grads, mode: str) -> float:
    """Sum of |g w| over the block (element), or |sum g . w| (vector: first-order change of dropping it)."""
    total = torch.zeros((), dtype=torch.float64)
    for p in block.parameters():
        g = grads.get(id(p))
        if g is not None:
            s = (g * p.detach().float()).double()
            total += s.abs().sum().cpu() if mode == "element" else s.sum().cpu()
    return float(total.abs())
