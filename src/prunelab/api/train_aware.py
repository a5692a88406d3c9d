"""`prunelab train-aware`: the training-aware pruning reproduction (see `prunelab.experiments.train_aware`)."""

from __future__ import annotations

from typing import Any

from prunelab.config.bench import FootprintConfig
from prunelab.config.train_aware import make_config
from prunelab.experiments.train_aware import run
from prunelab.measurement.footprint import metering


def train_aware_job(
    preset: str,
    overrides: dict[str, Any],
    json_path: str | None = None,
    plot_path: str | None = None,
    footprint: FootprintConfig | None = None,
) -> dict[str, Any]:
    """Train, track, prune at every level with every compared variant, evaluate; the report has `config`, and
    `training.energy` / `training.carbon`: the footprint of the training run itself (`footprint` says how to
    measure it: energy source, grid location or intensity; default auto and the world average)."""
    cfg = make_config(preset, **overrides)
    with metering(footprint):
        return run(cfg, preset, json_path=json_path, plot_path=plot_path)
