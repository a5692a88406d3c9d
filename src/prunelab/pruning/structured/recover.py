"""`--recover-steps`: a short LoRA fine-tune on the calibration windows right after structured pruning
(LLM-Pruner's recovery step), merged back into the weights.

Only the translation from the method's options to a `RecoverConfig` lives here; the training loop is the one
recovery loop of `prunelab.training.recover` (also behind `prune --recover` and `prunelab recover`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunelab.config.recover import RecoverConfig
from prunelab.training.recover import recover


def lora_recover(
    model: nn.Module, calib: torch.Tensor, steps: int, lr: float, rank: int, batch_size: int, seed: int
) -> dict[str, Any]:
    """`steps` LoRA steps of next-token loss on `calib` (n, L) windows, merged; returns the loss record."""
    batch = min(batch_size, calib.shape[0])
    cfg = RecoverConfig(mode="lora", tokens=steps * batch * calib.shape[1], seqlen=calib.shape[1], batch_size=batch,
                        lr=lr, schedule="constant", lora_rank=rank, seed=seed)  # fmt: skip
    record = recover(model, cfg, calib)
    return {**record, "rank": rank, "batch_size": batch_size}
