"""Magnitude pruning: remove the smallest |W|. The baseline every paper compares against.

Scope "layer" ranks each weight matrix on its own (the Wanda/SparseGPT papers' baseline); scope "global" ranks
all selected layers together, finding the exact k-th smallest |W| by bisection over float32 bit patterns so no
concatenated copy of the model is ever made.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch
from torch import nn

from prunelab.config.methods import MagnitudeOptions
from prunelab.errors import PrunelabError
from prunelab.models import prunable_layers, weight_2d
from prunelab.pruning.base import Capabilities, LayerResult, LayerwisePruner, PruneResult
from prunelab.pruning.masks import count_to_prune, nm_mask, per_layer_mask


class Magnitude(LayerwisePruner):
    name = "magnitude"
    summary = "smallest |W| per layer (or globally with options scope=global); no calibration data"
    Options = MagnitudeOptions
    capabilities = Capabilities(needs_calibration=False, comparison_group="layer", takes_stages=True)
    statistic = None

    @property
    def caps(self) -> Capabilities:
        caps = super().caps
        if self.options.scope == "global":  # one ranking over every selected weight: needs them all at once
            caps = replace(caps, comparison_group="model", block_local=False, supports_nm=False, takes_stages=False)
        return caps

    def prune_weight(self, name: str, weight: torch.Tensor, stat: object, sparsity: float) -> torch.Tensor:
        scores = weight.abs()
        return nm_mask(scores, self.pattern) if self.pattern.is_nm else per_layer_mask(scores, sparsity)

    def prune(self, model: nn.Module, calib: torch.Tensor | None) -> PruneResult:
        if self.options.scope == "layer":
            return super().prune(model, calib)
        if self.pattern.is_nm:
            raise PrunelabError("magnitude scope=global applies to unstructured pruning only")
        start = time.perf_counter()
        layers = prunable_layers(model, self.cfg.targets, self.cfg.ignore)
        if not layers:
            raise PrunelabError("the target/ignore filter selects no layer to prune")
        weights = {n: weight_2d(m) for n, m in layers.items()}
        total = sum(w.numel() for w in weights.values())
        k = count_to_prune(total, self.sparsity)
        with torch.no_grad():
            threshold = _kth_smallest_abs(list(weights.values()), k)
            below = {n: int((w.abs().float() < threshold).sum()) for n, w in weights.items()}
            ties_left = k - sum(below.values())
            result = PruneResult(self.name, str(self.pattern), self.sparsity)
            for name, w in weights.items():
                a = w.abs().float()
                mask = a < threshold
                if ties_left > 0:
                    tie_idx = torch.nonzero((a == threshold).reshape(-1)).squeeze(1)[:ties_left]
                    mask.view(-1)[tie_idx] = True
                    ties_left -= tie_idx.numel()
                w[mask] = 0
                result.layers[name] = LayerResult(w.numel(), int((w == 0).sum()), self.sparsity)
        result.extra["global_threshold"] = float(threshold)
        result.seconds = time.perf_counter() - start
        return result


def _kth_smallest_abs(weights: list[torch.Tensor], k: int) -> float:
    """The k-th smallest |w| (1-based) over all tensors, exactly, in O(1) extra memory per tensor.

    Non-negative float32 values order like their int32 bit patterns, so a bisection over 2^31 integers hits the
    exact value in 31 steps.
    """
    if k <= 0:
        return float("-inf")
    lo, hi = 0, 0x7F800000  # [0, +inf] as bit patterns
    while lo < hi:
        mid = (lo + hi) // 2
        value = torch.tensor(mid, dtype=torch.int32).view(torch.float32).item()
        count = sum(int((w.abs().float() <= value).sum()) for w in weights)
        if count >= k:
            hi = mid
        else:
            lo = mid + 1
    return torch.tensor(lo, dtype=torch.int32).view(torch.float32).item()
