"""The teacher's top-k log-probs of every training window, computed once and cached on disk (`teacher_topk`).

Why: distillation runs the frozen teacher forward on every micro-step, and a run that sees its windows more than
once (several epochs, or a resume after a kill) recomputes the same logits. With the cache the teacher runs once
per window; training then reads k log-probs per token instead of running a forward of the dense model.

What is stored, per token of each window the run uses: the k largest teacher log-probs at temperature T (float16),
their token ids (int32), and the log of the teacher mass outside them (float32, exact from the full softmax at
build time). File: `<out>/.recover-checkpoint/teacher-topk/topk.pt`, written atomically, so it lives and dies with
the checkpoint: a kill keeps it (the rerun reuses it), a finished run deletes it (`recover`), and the output
folder's only-a-checkpoint test still holds. Its fingerprint hashes the teacher's weights (not its path), the
windows (data and seqlen), k, T and the compute precision; any difference rebuilds it, with a warning.

The loss (`topk_kl_loss`): KL over k + 1 outcomes, the top-k tokens and one "rest" bucket holding the remaining
mass of the teacher (stored) and of the student (logsumexp of its log-probs outside the top-k). Why a rest bucket
and not renormalising the teacher over its top-k: renormalising leaves the student's mass outside the top-k
unconstrained (nothing stops the tail from growing), while the bucket keeps the total tail mass matched. The
result is the exact KL of the coarsened distributions, so by the chain rule of KL
    KL_full = KL_topk + p_rest * KL(teacher tail || student tail),   (both tails renormalised)
it is a lower bound of the full loss, equal to it when k = vocabulary size (tests check both). So the losses a
cached run records are this KL, below an uncached run's at the same weights; compare runs by perplexity.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunelab._util import progress, progress_enabled
from prunelab.errors import PrunelabError
from prunelab.training.checkpoint import torch_save_atomic

log = logging.getLogger(__name__)
Targets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # top-k log-probs, their token ids, log mass outside

CACHE_DIR = "teacher-topk"
FILE = "topk.pt"
FORMAT = 1
NEG = -1e30  # "no mass": finite, so 0 * (NEG - x) is 0 and no gradient turns into nan
FP16_MIN = -65000.0  # float16 keeps log-probs above this (a -inf logit would make 0 * inf = nan)


def vocab_size(teacher: nn.Module) -> int:
    """The width of the teacher's logits (its output embedding's rows; config.vocab_size when it has none)."""
    get_head: Any = getattr(teacher, "get_output_embeddings", None)
    weight = getattr(get_head() if get_head is not None else None, "weight", None)
    return int(weight.shape[0]) if weight is not None else int(getattr(teacher.config, "vocab_size"))  # noqa: B009


def check_k(k: int, teacher: nn.Module) -> None:
    """k is at most the vocabulary (checked as soon as the teacher is loaded, before any pruning or training)."""
    v = vocab_size(teacher)
    if k > v:
        raise PrunelabError(f"teacher_topk {k} exceeds the teacher's vocabulary of {v} tokens")


def topk_targets(logits: torch.Tensor, k: int, temperature: float) -> Targets:
    """(top-k log-probs at T, their ids, log of the mass outside them) of (..., V) logits, in float32."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    values, indices = logp.topk(k, dim=-1)
    rest = torch.logsumexp(logp.scatter(-1, indices, float("-inf")), dim=-1)
    return values, indices, rest.clamp(min=NEG)


def topk_kl_loss(student_logits: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, rest: torch.Tensor,
                 temperature: float = 1.0) -> torch.Tensor:  # fmt: skip
    """T^2 * mean over tokens of the KL over (top-k tokens, rest bucket); `distill.kl_loss` when k = V."""
    v, k = student_logits.shape[-1], indices.shape[-1]
    log_q = F.log_softmax(student_logits.float().reshape(-1, v) / temperature, dim=-1)
    idx = indices.reshape(-1, k).long()
    lq_top = log_q.gather(-1, idx)
    lq_rest = torch.logsumexp(log_q.scatter(-1, idx, NEG), dim=-1)
    lp_top = values.float().reshape(-1, k)
    lp_rest = rest.float().reshape(-1).clamp(min=NEG)
    kl = (lp_top.exp() * (lp_top - lq_top)).sum(-1) + lp_rest.exp() * (lp_rest - lq_rest)
    return kl.mean() * temperature**2


@dataclass
class TopK:
    """The cached targets of windows `rows` (window index i -> row `row_of[i]`)."""

    rows: torch.Tensor
    values: torch.Tensor
    indices: torch.Tensor
    rest: torch.Tensor

    def __post_init__(self) -> None:
        n = int(self.rows.max()) + 1 if self.rows.numel() else 0
        self.row_of = torch.full((n,), -1, dtype=torch.long)
        self.row_of[self.rows] = torch.arange(self.rows.numel())

    def covers(self, needed: list[int]) -> bool:
        return all(i < self.row_of.numel() and int(self.row_of[i]) >= 0 for i in needed)

    def batch(self, windows: list[int], device: torch.device) -> Targets:
        """(values, indices, rest) of these windows, on `device`: `topk_kl_loss`'s teacher arguments."""
        r = self.row_of[torch.tensor(windows, dtype=torch.long)]
        return self.values[r].to(device), self.indices[r].to(device), self.rest[r].to(device)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.rows, self.values, self.indices, self.rest))


def fingerprint(teacher: nn.Module, windows: torch.Tensor, k: int, temperature: float, precision: str) -> str:
    """A hash of the teacher's weights and buffers (bytes, dtypes, shapes), the windows, k, T and the precision."""
    h = hashlib.blake2b(f"{FORMAT}|{k}|{temperature!r}|{precision}".encode(), digest_size=16)
    h.update(windows.contiguous().numpy().tobytes())
    for name, t in teacher.state_dict().items():
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def build(teacher: nn.Module, windows: torch.Tensor, rows: list[int], k: int, temperature: float, batch_size: int,
          device: torch.device, autocast: Callable[[], Any] | None = None,
          dtype: torch.dtype = torch.float16) -> TopK:  # fmt: skip
    """Run the teacher once over windows `rows`, under `autocast()` (the training's precision) when given;
    `dtype` of the stored log-probs (float32 only in tests)."""
    chunks: list[tuple[torch.Tensor, ...]] = []
    starts = range(0, len(rows), batch_size)
    for lo in progress(starts, desc="teacher top-k cache", unit="batch", disable=not progress_enabled()):
        ids = windows[rows[lo : lo + batch_size]].to(device)
        with autocast() if autocast is not None else contextlib.nullcontext():
            logits = teacher(input_ids=ids, use_cache=False).logits
        values, indices, rest = topk_targets(logits, k, temperature)
        chunks.append((values.clamp(min=FP16_MIN).to(dtype).cpu(), indices.int().cpu(), rest.cpu()))
    values, indices, rest = (torch.cat([c[j] for c in chunks]) for j in range(3))
    return TopK(torch.tensor(rows, dtype=torch.long), values, indices, rest)


def load(path: Path, expected: str, needed: list[int]) -> TopK | None:
    """The cache at `path` if it was built for this teacher/data/k/T and covers `needed`; else None (rebuild)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        cache = TopK(state["rows"], state["values"], state["indices"], state["rest"])
    except Exception as e:  # derived data: a damaged file is rebuilt, never trusted
        log.warning("teacher top-k cache %s unreadable (%s): rebuilding it", path, type(e).__name__)
        return None
    if state.get("fingerprint") != expected or not cache.covers(needed):
        log.warning("teacher top-k cache %s was built for another teacher, data, k or temperature: rebuilding it",
                    path)  # fmt: skip
        return None
    return cache


def save(path: Path, cache: TopK, key: str) -> None:
    torch_save_atomic(path, {"fingerprint": key, "rows": cache.rows, "values": cache.values,
                             "indices": cache.indices, "rest": cache.rest})  # fmt: skip


def remove(folder: Path) -> None:
    shutil.rmtree(folder / CACHE_DIR, ignore_errors=True)


def prepare(teacher: nn.Module, windows: torch.Tensor, needed: list[int], k: int, temperature: float,
            batch_size: int, acc: Any, folder: Path | None) -> tuple[TopK, dict[str, Any]]:  # fmt: skip
    """Load the cache from `folder` (a checkpoint folder) or build it (the main process writes, the others wait
    and read); without a folder it is built in memory. Returns (cache, what prunelab.json records of it)."""
    began = time.perf_counter()
    precision = f"{acc.device.type}|{acc.mixed_precision}"
    key = fingerprint(teacher, windows, k, temperature, precision)
    path = folder / CACHE_DIR / FILE if folder is not None else None
    cache = load(path, key, needed) if path is not None else None
    reused, build_seconds = cache is not None, 0.0
    if cache is None and path is not None and not acc.is_main_process:
        acc.wait_for_everyone()  # the main process builds and writes it
        cache = load(path, key, needed)
        if cache is None:
            raise PrunelabError(f"teacher top-k cache {path} missing after the main process built it")
    elif cache is None:
        t0 = time.perf_counter()
        cache = build(teacher, windows, needed, k, temperature, batch_size, acc.device, acc.autocast)
        build_seconds = time.perf_counter() - t0
        if path is not None:
            save(path, cache, key)
            acc.wait_for_everyone()
    elif path is not None:
        acc.wait_for_everyone()  # the others may be waiting on a build that found nothing to do
    info = {"used": True, "k": k, "reused": reused, "build_seconds": build_seconds, "bytes": cache.nbytes(),
            "windows": int(cache.rows.numel()), "seconds": time.perf_counter() - began}  # fmt: skip
    log.info("teacher top-k cache (k=%d): %s, %d windows, %.1f MB, built in %.1f s", k,
             "reused" if reused else "built", info["windows"], info["bytes"] / 1e6, build_seconds)  # fmt: skip
    return cache, info
