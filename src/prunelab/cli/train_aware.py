"""`prunelab train-aware`: parse -> preset + overrides (TrainAwareConfig) -> api.train_aware_job -> print."""

from __future__ import annotations

import argparse
from typing import Any

from prunelab.cli._base import add_field, footprint_args, footprint_config
from prunelab.config.train_aware import COMPARED, PRESETS, TrainAwareConfig

OVERRIDES = ["epochs", "steps_per_epoch", "batch_size", "seqlen", "last_k", "eval_windows", "train_chars", "seed",
             "lr", "threads", "corpus", "weighting", "lr_schedule"]  # fmt: skip


def register(sub: Any) -> None:
    p = sub.add_parser("train-aware", help="reproduce training-aware pruning: train, track, prune 10..90%%, evaluate")
    p.add_argument("--preset", default="tiny", choices=list(PRESETS),
                   help="tiny (minutes), small (~0.8M params), paper (10.7M params)")  # fmt: skip
    p.add_argument("--json", dest="json_path", default=None, help="write the loss-vs-compression table here")
    p.add_argument("--plot", default=None, help="loss-vs-compression PNG (needs matplotlib: prunelab[plot])")
    for name in OVERRIDES:
        info = TrainAwareConfig.model_fields[name]
        shown = info.get_default() if not info.is_required() else None
        suffix = f"override the preset (default: the preset's{f', else {shown}' if shown is not None else ''})"
        add_field(p, TrainAwareConfig, name, default=None, help=f"{info.description or name.replace('_', ' ')}: "
                  f"{suffix}")  # fmt: skip
    footprint_args(p, "the training run")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from prunelab import api

    overrides = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}
    report = api.train_aware_job(
        args.preset, overrides, json_path=args.json_path, plot_path=args.plot, footprint=footprint_config(args)
    )
    labels = list(COMPARED)
    print(
        f"{report['model']['params']:,} parameters, trained {report['training']['seconds']:.0f} s; "
        f"validation loss (perplexity) by compression of the decoder linear weights:"
    )
    print("compression  " + "  ".join(f"{label:>20s}" for label in labels))
    rows = {(r["compression"], r["method"]): r for r in report["levels"]}
    for c in report["config"]["levels"]:
        cells = [rows[(c, label)] for label in labels]
        print(f"{c:11.0%}  " + "  ".join(f"{r['val_loss']:10.4f} ({r['perplexity']:7.3f})" for r in cells))
    for r in report["threshold_sweep"]:
        print(f"PruneRate {r['prune_rate']:<5g} -> sparsity {r['achieved_sparsity']:.3f}, val loss {r['val_loss']:.4f}")
    print_footprint("training", report["training"])
    print(
        f"wall time {report['wall_seconds']:.0f} s"
        + (f"; json {args.json_path}" if args.json_path else "")
        + (f"; plot {report['plot']}" if report.get("plot") else "")
    )
    return 0


def print_footprint(what: str, section: dict[str, Any]) -> None:
    """One line: the energy and carbon of a training run, labelled like bench's (source, method, estimate)."""
    energy, carbon = section.get("energy"), section.get("carbon")
    if not energy or energy.get("joules") is None or not carbon:
        return
    label = "ESTIMATE" if energy["is_estimate"] else "measured"
    where = carbon.get("region") or carbon.get("country") or "user"
    print(
        f"{what} energy [{energy['energy_source']}, {energy.get('method') or '?'}, {label}]: "
        f"{energy['joules']:.1f} J ({energy['kwh']:.3g} kWh); carbon [{where} {carbon['grid_intensity']:g} "
        f"gCO2eq/kWh, {carbon.get('source') or '?'}; year {carbon.get('year') or 'unknown'}]: "
        f"{carbon['g_co2eq']:.4g} g CO2eq"
    )
