"""The losses of recovery training: logit distillation (KL at temperature T) and the hidden-state MSE.

KL(teacher || student) of the softened token distributions, times T^2 so the gradient scale does not shrink as T
grows (Hinton et al. 2015); averaged over tokens, computed in float32 (bf16 log-softmax over a 49k vocabulary
loses the tail the student is meant to learn). The hidden-state term matches each kept student block to the
teacher block it came from (`layer_map`), through a trained linear projection only where the widths differ.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


def kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T^2 * mean over tokens of sum_v p_t(v) (log p_t(v) - log p_s(v)), both softened by T."""
    v = student_logits.shape[-1]
    log_s = F.log_softmax(student_logits.float().reshape(-1, v) / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float().reshape(-1, v) / temperature, dim=-1)
    kl = F.kl_div(log_s, log_t, log_target=True, reduction="sum") / log_s.shape[0]
    return kl * temperature**2


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Plain causal LM loss: position i predicts token i + 1."""
    v = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, v), ids[:, 1:].reshape(-1))


def layer_map(student_layers: int, teacher_layers: int, removed: Sequence[int] | None = None) -> list[int]:
    """The teacher block index of each student block: the kept ones when the removed layers are known, else the
    identity (same depth) or evenly spaced blocks (a guess, logged)."""
    if removed is not None and teacher_layers - len(removed) == student_layers:
        gone = set(removed)
        return [i for i in range(teacher_layers) if i not in gone]
    if student_layers == teacher_layers:
        return list(range(teacher_layers))
    log.warning("removed layers unknown: matching %d student blocks to evenly spaced teacher blocks", student_layers)
    return [round((j + 1) * teacher_layers / student_layers) - 1 for j in range(student_layers)]


class HiddenMatch(nn.Module):
    """Projections from student to teacher width (identity where equal); trained with the student."""

    def __init__(self, student_width: int, teacher_width: int, n: int) -> None:
        super().__init__()
        self.proj = nn.ModuleList(
            nn.Identity() if student_width == teacher_width else nn.Linear(student_width, teacher_width, bias=False)
            for _ in range(n)
        )

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
        losses = [F.mse_loss(p(s.float()), t.float()) for p, s, t in zip(self.proj, student, teacher, strict=True)]
        return torch.stack(losses).mean()


def _output(out: object) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out  # type: ignore[return-value]


@contextmanager
def block_outputs(blocks: Sequence[nn.Module], keep: Sequence[int] | None = None) -> Iterator[list[torch.Tensor]]:
    """Collect the hidden-state outputs of `blocks` (only the indices in `keep`) during forwards in the block."""
    chosen = list(range(len(blocks))) if keep is None else list(keep)
    store: list[torch.Tensor] = []
    handles = [blocks[i].register_forward_hook(lambda _m, _a, out: store.append(_output(out))) for i in chosen]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()
