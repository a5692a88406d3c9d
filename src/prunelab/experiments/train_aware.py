"""Reproduction of the small-transformer experiment of training-aware pruning (`prunelab train-aware`).

Islam, Belhaouari, Bermak (2025) train a 10.7M-parameter decoder-only transformer, track its weights over the
epochs, prune at 10%..90% compression and report validation loss vs compression: loss falls up to about 60%, then
rises sharply beyond about 70%. Here: a Llama-architecture model trained from scratch, the weights tracked by
`TrajectoryTracker`, then at each level (a) the `trajectory` method (target-sparsity mode, final weights kept),
(a') the same keeping the averaged clone, and (b) magnitude pruning of the final weights, all at equal sparsity of
the decoder-block linear layers (embeddings and head stay dense, as in every prunelab method). A sweep of the
faithful threshold mode (PruneRate) reports the sparsity each PruneRate gives.

Decisions, and why:
- Character-level tokenizer built from the training text (id 0 = a character unseen in training). 10.7M
  parameters with 6 layers of width 384 is exactly nanoGPT's shakespeare-char model, so the `paper` preset uses
  its shape and hyperparameters (seqlen 256, batch 64, lr 1e-3 cosine to 1e-4, 100 warmup steps, beta2 0.99,
  5000 steps = 100 "epochs" of 50 steps). A 49k-token vocabulary would put most parameters in the embeddings.
- An "epoch" is a fixed number of optimiser steps on random windows, not a full pass: one pass over the 4.8M
  characters of Shakespeare costs hours on a laptop CPU at this width.
- Shakespeare: training text = the calibration plays, validation = the held-out plays (`prunelab.data`). A file
  corpus whose two splits are the same text is cut 90% / 10%.
- Validation loss = mean next-token NLL over non-overlapping windows (`prunelab.evaluation.perplexity`).
- The training's footprint beside inference: when the caller passes an `inference` probe (the api passes
  `measurement.bench.inference_energy`, a short batch-1 decode), the trained dense model and, at each level, the
  `trajectory` variant are measured, and `training.payback` gives per level the break-even of
  `measurement.footprint.payback`. One variant per level: the masks run through dense kernels, so at one level every
  variant has the same shapes and the same count of zeros and costs the same per token; expect "unresolved" (a
  difference within the spread of repeated measurements) or "never", the honest answer for unstructured sparsity
  on dense kernels, and the payback notes say so. The training
  energy is the whole from-scratch run's, tracking included: an upper bound on what training-aware pruning adds.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunelab import data
from prunelab._util import (
    check_memory,
    check_writable,
    environment,
    peak_rss_mb,
    progress,
    work_span,
    write_json_atomic,
)
from prunelab.config.prune import PruneConfig
from prunelab.config.train_aware import COMPARED, LEVELS, PRESETS, PRUNE_RATES, TrainAwareConfig, make_config
from prunelab.errors import PrunelabError
from prunelab.evaluation.perplexity import perplexity
from prunelab.measurement.footprint import payback
from prunelab.models import prunable_layers, weight_2d
from prunelab.pruning.run import prune
from prunelab.training.callbacks import TrajectoryCallback
from prunelab.training.tracker import MODEL_ATTR, TrajectoryTracker

__all__ = ["COMPARED", "LEVELS", "PRESETS", "PRUNE_RATES", "CharTokenizer", "TrainAwareConfig", "make_config",
           "plot", "prune_levels", "run"]  # fmt: skip

log = logging.getLogger(__name__)

# model -> its inference energy record (`measurement.bench.inference_energy`), supplied by the caller
InferenceProbe = Callable[[nn.Module], dict[str, Any]]
MEASURED_VARIANT = "trajectory"  # the variant whose inference energy is measured at each level (see the docstring)
NOT_MEASURED = "inference energy not measured (--no-inference-energy or --energy off)"


@dataclass
class CharTokenizer:
    """Characters of the training text, sorted; id 0 stands for any other character."""

    chars: str

    @classmethod
    def fit(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> torch.Tensor:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table = np.zeros(max(int(codes.max(initial=0)), max(map(ord, self.chars))) + 1, dtype=np.int64)
        table[[ord(c) for c in self.chars]] = np.arange(1, len(self.chars) + 1)
        return torch.from_numpy(table[codes])


def load_corpus(spec: str, train_chars: int | None) -> tuple[str, str]:
    """(training text, validation text) of a source."""
    data.check_source(spec)
    train, val = data.load_text(spec, "calib").text, data.load_text(spec, "eval").text
    if train == val:
        cut = int(len(train) * 0.9)
        train, val = train[:cut], train[cut:]
        log.info("%s has one text: first 90%% for training, last 10%% for validation", spec)
    if train_chars is not None:
        train = train[:train_chars]
    return train, val


def build_model(cfg: TrainAwareConfig, vocab_size: int) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    if cfg.hidden % cfg.heads:
        raise PrunelabError(f"hidden size {cfg.hidden} is not a multiple of heads {cfg.heads}")
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.seqlen,
        tie_word_embeddings=False,
    )
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config)


def lr_at(cfg: TrainAwareConfig, step: int, total: int) -> float:
    """Linear warmup, then constant or cosine decay to min_lr_ratio x lr (nanoGPT's schedule)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def val_loss(model: nn.Module, windows: torch.Tensor) -> float:
    return perplexity(model, windows, batch_size=16, desc="val").nll


def train(
    model: nn.Module, cfg: TrainAwareConfig, ids: torch.Tensor, val: torch.Tensor, callback: TrajectoryCallback
) -> list[dict[str, float]]:
    """AdamW on random windows; the callback records the weights after each epoch. Returns the loss curve."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(cfg.seed)
    total = cfg.epochs * cfg.steps_per_epoch
    if ids.numel() <= cfg.seqlen + 1:
        raise PrunelabError(f"training text has {ids.numel()} characters, fewer than one window of {cfg.seqlen}")
    callback.on_train_begin(epochs=cfg.epochs, steps=total)
    curve: list[dict[str, float]] = []
    bar = progress(total=total, desc="train", unit="step")
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        losses = []
        for _ in range(cfg.steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, step, total)
            starts = torch.randint(0, ids.numel() - cfg.seqlen, (cfg.batch_size,), generator=gen)
            batch = torch.stack([ids[s : s + cfg.seqlen] for s in starts.tolist()])
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            callback.on_optimizer_step()
            losses.append(loss.item())
            step += 1
            bar.update(1)
        callback.on_epoch_end()
        curve.append({"epoch": epoch, "train_loss": sum(losses) / len(losses), "val_loss": val_loss(model, val)})
        bar.set_postfix(train=f"{curve[-1]['train_loss']:.3f}", val=f"{curve[-1]['val_loss']:.3f}")
        log.info("epoch %d: train loss %.4f, val loss %.4f", epoch, curve[-1]["train_loss"], curve[-1]["val_loss"])
    bar.close()
    model.eval()
    return curve


def _compact(report: dict[str, Any]) -> dict[str, Any]:
    """A PruneResult dict without the per-layer table (the layer sparsities are summarised instead)."""
    layers = report.pop("layers")
    report["layer_sparsity_min"] = min(v["sparsity"] for v in layers.values())
    report["layer_sparsity_max"] = max(v["sparsity"] for v in layers.values())
    return report


def prune_levels(
    model: nn.Module, cfg: TrainAwareConfig, val: torch.Tensor, inference: InferenceProbe | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Prune a copy of the trained weights at each level with each compared variant (through the one prune
    path, `prunelab.pruning.run.prune`); then the threshold-mode sweep of PruneRates. With `inference`, the
    MEASURED_VARIANT row of each level > 0 gets `inference` (its energy per 1k generated tokens)."""
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    levels: list[dict[str, Any]] = []
    runs = [(c, label) for c in cfg.levels for label in COMPARED]
    for compression, label in progress(runs, desc="prune+eval", unit="run"):
        model.load_state_dict(trained)
        method, options = COMPARED[label]
        row: dict[str, Any] = {"compression": compression, "method": label}
        if compression > 0:
            result = prune(model, PruneConfig(method=method, sparsity=compression, options=options))
            row.update(achieved_sparsity=result.achieved_sparsity, result=_compact(result.to_dict()))
            if inference is not None and label == MEASURED_VARIANT:
                row["inference"] = inference(model)
        else:  # dense reference: the final weights, or the averaged clone for trajectory-avg
            if options.get("weights") == "average":
                _load_average(model)
            row["achieved_sparsity"] = 0.0
        ppl = perplexity(model, val, batch_size=16, desc="val")
        row.update(val_loss=ppl.nll, perplexity=ppl.perplexity)
        levels.append(row)
    threshold: list[dict[str, Any]] = []
    for rate in cfg.prune_rates:
        model.load_state_dict(trained)
        result = prune(model, PruneConfig(method="trajectory", options={"prune_rate": rate}))
        ppl = perplexity(model, val, batch_size=16, desc="val")
        threshold.append(
            {
                "prune_rate": rate,
                "method": "trajectory-threshold",
                "achieved_sparsity": result.achieved_sparsity,
                "layer_sparsity_min": min(r.sparsity for r in result.layers.values()),
                "layer_sparsity_max": max(r.sparsity for r in result.layers.values()),
                "val_loss": ppl.nll,
                "perplexity": ppl.perplexity,
            }
        )
    model.load_state_dict(trained)
    return levels, threshold


def _load_average(model: nn.Module) -> None:
    """Replace every tracked layer's weight by its weighted-average clone."""
    tracker: TrajectoryTracker = getattr(model, MODEL_ATTR)
    with torch.no_grad():
        for name, module in prunable_layers(model).items():
            weight_2d(module).copy_(tracker.average(name))


def training_bytes(cfg: TrainAwareConfig) -> int:
    """A lower bound on the float32 activations one training step keeps for backward: per layer and token about
    16 x hidden (residual, attention, MLP) plus heads x seqlen attention scores (eager attention)."""
    per_layer = cfg.batch_size * cfg.seqlen * (16 * cfg.hidden + 2 * cfg.intermediate + cfg.heads * cfg.seqlen)
    return 4 * cfg.layers * per_layer


def run(
    cfg: TrainAwareConfig,
    preset: str,
    json_path: str | None = None,
    plot_path: str | None = None,
    inference: InferenceProbe | None = None,
) -> dict[str, Any]:
    """Train, track, prune at every level with every method, evaluate; write the JSON (and the plot). With
    `inference`, the inference energy of the dense and pruned models and the training's break-even too."""
    check_writable(json_path, what="--json")
    check_writable(plot_path, what="--plot")
    check_memory(training_bytes(cfg), f"training (batch {cfg.batch_size} x seqlen {cfg.seqlen})")
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, preset, json_path, plot_path, inference)
    finally:
        torch.set_num_threads(threads)


def _run(
    cfg: TrainAwareConfig, preset: str, json_path: str | None, plot_path: str | None, inference: InferenceProbe | None
) -> dict[str, Any]:
    started = time.perf_counter()
    train_text, val_text = load_corpus(cfg.corpus, cfg.train_chars)
    tokenizer = CharTokenizer.fit(train_text)
    ids, val_ids = tokenizer.encode(train_text), tokenizer.encode(val_text)
    val = data.eval_windows(val_ids, cfg.seqlen, cfg.eval_windows)
    epoch_val = val[: cfg.epoch_eval_windows]
    model = build_model(cfg, tokenizer.vocab_size)
    params = sum(p.numel() for p in model.parameters())
    prunable = sum(weight_2d(m).numel() for m in prunable_layers(model).values())
    log.info("model: %d parameters (%d in prunable layers), vocab %d", params, prunable, tokenizer.vocab_size)
    tracker = TrajectoryTracker(model, last_k=cfg.last_k, weighting=cfg.weighting)
    t0 = time.perf_counter()
    with work_span("training") as footprint:  # metered when the caller installs a meter (api.train_aware_job)
        curve = train(model, cfg, ids, epoch_val, TrajectoryCallback(tracker))
    train_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    dense_inference = inference(model) if inference is not None else None  # the final weights, as trained
    levels, threshold = prune_levels(model, cfg, val, inference)
    missing = None if inference is not None else NOT_MEASURED
    paybacks = [
        {"compression": r["compression"], **payback(footprint, dense_inference, r.get("inference"), missing)}
        for r in levels
        if r["method"] == MEASURED_VARIANT and r["compression"] > 0
    ]
    report: dict[str, Any] = {
        "preset": preset,
        "config": cfg.model_dump(),
        "tokenizer": {"kind": "char", "vocab_size": tokenizer.vocab_size, "unknown_id": 0},
        "model": {"arch": "llama", "params": params, "prunable_params": prunable},
        "training": {
            "seconds": train_seconds,
            "steps": cfg.epochs * cfg.steps_per_epoch,
            "tokens": cfg.epochs * cfg.steps_per_epoch * cfg.batch_size * cfg.seqlen,
            "train_chars": len(train_text),
            "curve": curve,
            # energy and carbon of the training loop itself (the per-epoch validation included), labelled like
            # bench's; absent when nobody meters (the api always does)
            **({"energy": footprint["energy"], "carbon": footprint["carbon"]} if footprint else {}),
            # beside it: break-even per level against the inference energy below (measurement.footprint.payback)
            "payback": paybacks,
        },
        "inference": {
            "dense": dense_inference,
            "measured_variant": MEASURED_VARIANT,
            "why_one_variant": "masks run through dense kernels: at one level every variant has the same shapes "
            "and count of zeros, so the same cost per token",
            "missing": missing,
        },
        "tracker": {
            "last_k": tracker.last_k,
            "weighting": tracker.weighting,
            "snapshots": tracker.snapshots,
            "averaged": tracker.recorded,
            "bytes": tracker.nbytes(),
        },
        "eval": {"windows": val.shape[0], "seqlen": cfg.seqlen, "predicted_tokens": val.shape[0] * (cfg.seqlen - 1)},
        "levels": levels,
        "threshold_sweep": threshold,
        "sweep_seconds": time.perf_counter() - t0,
        "wall_seconds": time.perf_counter() - started,
        "peak_rss_mb": peak_rss_mb(),
        "environment": environment(),
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if json_path:
        write_json_atomic(json_path, report)
    if plot_path:
        report["plot"] = plot(report, plot_path)
    return report


def plot(report: dict[str, Any], path: str) -> str | None:
    """Loss vs compression, one line per method (matplotlib is optional: the `plot` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'prunelab[plot]'): no plot written")
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label in COMPARED:
        rows = [r for r in report["levels"] if r["method"] == label]
        ax.plot([100 * r["compression"] for r in rows], [r["val_loss"] for r in rows], marker="o", label=label)
    rows = report["threshold_sweep"]
    ax.plot(
        [100 * r["achieved_sparsity"] for r in rows],
        [r["val_loss"] for r in rows],
        linestyle="--",
        marker="x",
        label="trajectory (PruneRate sweep)",
    )
    ax.set_xlabel("compression (% of decoder linear weights removed)")
    ax.set_ylabel("validation loss (nats / character)")
    ax.set_title(f"loss vs compression ({report['preset']}, {report['model']['params'] / 1e6:.2f}M params)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return str(path)
