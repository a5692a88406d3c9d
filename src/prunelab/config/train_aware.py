"""Settings of the training-aware reproduction (`prunelab train-aware`): presets and every overridable field."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field

from prunelab.config.base import StrictModel, build
from prunelab.errors import did_you_mean

Weighting = Literal["sqrt", "linear", "uniform"]
WEIGHTINGS: tuple[str, ...] = get_args(Weighting)
LR_SCHEDULES: tuple[str, ...] = ("cosine", "constant")

LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PRUNE_RATES = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
# compared variant label -> (prunelab method, options); not to be confused with the pruning registry
COMPARED: dict[str, tuple[str, dict[str, Any]]] = {
    "magnitude": ("magnitude", {}),
    "trajectory": ("trajectory", {"weights": "final"}),
    "trajectory-avg": ("trajectory", {"weights": "average"}),
}


class TrainAwareConfig(StrictModel):
    """One reproduction run. Presets fill these; any field can be overridden."""

    corpus: str = "shakespeare"
    layers: int = Field(ge=1)
    hidden: int = Field(ge=8)
    heads: int = Field(ge=1)
    intermediate: int = Field(ge=8)
    seqlen: int = Field(ge=8)
    batch_size: int = Field(ge=1)
    epochs: int = Field(ge=1)
    steps_per_epoch: int = Field(ge=1)
    lr: float = Field(gt=0, allow_inf_nan=False)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    weight_decay: float = Field(0.1, ge=0)
    last_k: int | None = Field(None, ge=1, description="epochs averaged by the tracker (None = all)")
    weighting: Weighting = "sqrt"
    eval_windows: int = Field(64, ge=1, description="validation windows of seqlen tokens for the final table")
    epoch_eval_windows: int = Field(16, ge=1, description="validation windows for the per-epoch curve")
    train_chars: int | None = Field(None, ge=1000, description="use only this many training characters")
    levels: list[float] = Field(default_factory=lambda: list(LEVELS))
    prune_rates: list[float] = Field(default_factory=lambda: list(PRUNE_RATES))
    seed: int = 0
    threads: int | None = Field(None, ge=1, description="torch CPU threads during the run (default: torch's)")


PRESETS: dict[str, dict[str, Any]] = {
    # About 120k parameters, 200 steps of 32 x 64 characters: the under-5-minutes smoke run of the method. One
    # thread: at this width a second one costs 10x the CPU time in synchronisation on a busy 2-core machine.
    "tiny": dict(layers=2, hidden=64, heads=4, intermediate=192, seqlen=64, batch_size=32, epochs=10,
                 steps_per_epoch=20, lr=3e-3, warmup_steps=20, last_k=5, eval_windows=64, threads=1),
    # About 0.8M parameters: the largest run that takes about half an hour on a 2-core CPU.
    "small": dict(layers=4, hidden=128, heads=4, intermediate=384, seqlen=128, batch_size=16, epochs=20,
                  steps_per_epoch=40, lr=2e-3, warmup_steps=50, last_k=10, eval_windows=64, threads=1),
    # The paper's 10.7M parameters, with nanoGPT shakespeare-char's shape and schedule (see the module docstring).
    "paper": dict(layers=6, hidden=384, heads=6, intermediate=1024, seqlen=256, batch_size=64, epochs=100,
                  steps_per_epoch=50, lr=1e-3, warmup_steps=100, last_k=10, eval_windows=200),
}  # fmt: skip


def make_config(preset: str, **overrides: Any) -> TrainAwareConfig:
    if preset not in PRESETS:
        raise did_you_mean(preset, PRESETS, "preset")
    return build(TrainAwareConfig, {**PRESETS[preset], **overrides}, f"train-aware settings (preset {preset})")
