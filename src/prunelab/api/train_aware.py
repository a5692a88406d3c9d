"""`prunelab train-aware`: the training-aware pruning reproduction (see `prunelab.experiments.train_aware`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from prunelab.config.bench import FootprintConfig, InferenceEnergyConfig
from prunelab.config.train_aware import make_config
from prunelab.experiments.train_aware import run
from prunelab.measurement.bench import inference_energy
from prunelab.measurement.footprint import metering
from prunelab.models import prunable_layers


def train_aware_job(
    preset: str,
    overrides: dict[str, Any],
    json_path: str | None = None,
    plot_path: str | None = None,
    footprint: FootprintConfig | None = None,
    inference: InferenceEnergyConfig | None = None,
) -> dict[str, Any]:
    """Train, track, prune at every level with every compared variant, evaluate; the report has `config`, and
    `training.energy` / `training.carbon`: the footprint of the training run itself (`footprint` says how to
    measure it: energy source, grid location or intensity; default auto and the world average). Beside it, unless
    `inference.inference_energy` is off or energy is off: `inference` (a short decode of the trained dense model
    and of each level's pruned model, metered with the same `footprint` settings) and `training.payback` (the
    break-even per level). Measured by default: train-aware saves no model that `prunelab bench` could measure
    later, and the decode of these small models costs well under a second each."""
    cfg = make_config(preset, **overrides)
    footprint = footprint or FootprintConfig()
    inference = inference or InferenceEnergyConfig()
    probe = None
    if inference.inference_energy and footprint.energy != "off":

        def probe(model: nn.Module) -> dict[str, Any]:
            return inference_energy(model, inference, footprint, prunable_layers(model))

    with metering(footprint):
        return run(cfg, preset, json_path=json_path, plot_path=plot_path, inference=probe)
