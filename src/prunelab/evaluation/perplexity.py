"""Perplexity = exp(mean next-token negative log-likelihood) over non-overlapping windows.

This is the protocol of the Wanda and SparseGPT papers: the text is tokenized once, cut into windows of `seqlen`
tokens, each window scored on its own (no context carried over), and the NLL averaged over every predicted token
(seqlen - 1 per window). Windows are batched so that the logits of a batch stay under a memory budget; the cost
is then that of a plain forward pass plus a cross-entropy.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from prunelab._util import progress
from prunelab.data import check_eval_settings
from prunelab.models import next_token_nll

log = logging.getLogger(__name__)

LOGITS_BUDGET_BYTES = 512 * 2**20
# an evaluation expected to take longer than this logs its estimate after the first batch (see _say_estimate)
ESTIMATE_AFTER_S = 60.0


@dataclass
class PerplexityResult:
    perplexity: float
    nll: float
    windows: int
    seqlen: int
    tokens: int  # predicted tokens: windows * (seqlen - 1)
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.windows * self.seqlen / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}


def auto_batch_size(seqlen: int, vocab: int) -> int:
    """Windows per batch such that float32 logits (and their log-softmax) stay within the budget."""
    return max(1, LOGITS_BUDGET_BYTES // (seqlen * vocab * 4 * 2))


def _say_estimate(desc: str, n: int, batch_size: int, batches: int, first_s: float) -> None:
    """Before a long evaluation, say how long it will take (the first batch's measured time x the batches), so a
    user who did not mean to score every window of a corpus can stop and pass --max-windows."""
    estimate = first_s * batches
    if estimate >= ESTIMATE_AFTER_S:
        log.info(
            "%s: %d windows (%d batches of %d) x %.3g s for the first batch = about %.0f s (%.1f min) in all; "
            "--max-windows caps it",
            desc, n, batches, batch_size, first_s, estimate, estimate / 60,
        )  # fmt: skip


def perplexity(
    model: nn.Module, windows: torch.Tensor, batch_size: int | None = None, desc: str = "perplexity"
) -> PerplexityResult:
    """Perplexity of `model` on token windows (n, seqlen)."""
    n, seqlen = windows.shape
    check_eval_settings(seqlen, n, batch_size)
    vocab = model.get_output_embeddings().weight.shape[0]
    device = next(model.parameters()).device
    # On a CPU one window per forward is fastest (batching only adds memory traffic); on a GPU fill the budget.
    batch_size = batch_size or (1 if device.type == "cpu" else auto_batch_size(seqlen, vocab))
    total_nll = 0.0
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    batches = math.ceil(n / batch_size)
    with torch.no_grad():
        for a in progress(range(0, n, batch_size), desc=desc, unit="batch", leave=False):
            batch = windows[a : a + batch_size].to(device)
            total_nll += next_token_nll(model, batch)
            if a == 0:
                _say_estimate(desc, n, batch_size, batches, time.perf_counter() - start)
    if device.type == "cuda":
        torch.cuda.synchronize()
    model.train(was_training)
    seconds = time.perf_counter() - start
    tokens = n * (seqlen - 1)
    nll = total_nll / tokens
    return PerplexityResult(math.exp(nll), nll, n, seqlen, tokens, seconds)
