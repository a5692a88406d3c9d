"""`prunelab calibrate-activations`: parse -> ActivationCalibConfig (+ ModelConfig) -> api.calibrate_activations_job
-> print."""

from __future__ import annotations

import argparse
from typing import Any

from prunelab.cli._base import add_field, model_args, model_config, values
from prunelab.config.base import build
from prunelab.config.runtime import ActivationCalibConfig

FIELDS = [
    "calib",
    "calib_samples",
    "calib_seqlen",
    "calib_batch_size",
    "seed",
    "allocation",
    "exclude",
    "levels",
    "greedy_tokens",
    "greedy_step",
    "greedy_lazy",
    "cost_table",
]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate-activations",
        help="calibrate activation-sparsity thresholds once; choose the level at run time (eval/bench/generate)",
    )
    model_args(p)
    for name in FIELDS:
        kwargs: dict[str, Any] = {"type": float} if name == "levels" else {}
        add_field(p, ActivationCalibConfig, name, **kwargs)
    p.add_argument("--output", required=True, help="folder to write: the model (plain HF folder) + threshold table")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from prunelab import api

    cfg = build(ActivationCalibConfig, values(args, FIELDS), "calibration settings")
    r = api.calibrate_activations_job(cfg, model_config(args), args.output, args.overwrite, args.json_path)
    cal = r["calibration"]
    print(f"calibrated {r['layers']} layers ({r['groups']} inputs) of {r['model']} on {cal['samples']} x "
          f"{cal['seqlen']} tokens of {cal['source']}, allocation {r['allocation']}, levels {r['grid']}")  # fmt: skip
    print(f"wrote {r['output']} (loads in plain transformers as the dense model; "
          f"`--activation-sparsity S` with S up to {r['levels'][-1]:g} applies it)")  # fmt: skip
    return 0
