"""`prunelab train-aware`: parse -> preset + overrides (TrainAwareConfig) -> api.train_aware_job -> print."""

from __future__ import annotations

import argparse
from typing import Any

from prunelab.cli._base import add_field, footprint_args, footprint_config, inference_args, inference_config
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
    inference_args(p, "the training's footprint")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from prunelab import api

    overrides = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}
    report = api.train_aware_job(args.preset, overrides, json_path=args.json_path, plot_path=args.plot,
                                 footprint=footprint_config(args), inference=inference_config(args))  # fmt: skip
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
    print_levels_payback(report)
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


def _energy_label(record: dict[str, Any]) -> str:
    label = "ESTIMATE" if record.get("is_estimate") else "measured"
    return f"{record.get('energy_source')}, {record.get('method') or '?'}, {label}"


def _inference_label(record: dict[str, Any]) -> str:
    p, c = record["protocol"], record.get("carbon") or {}
    where = c.get("region") or c.get("country") or "user"
    return (f"{_energy_label(record)}; batch 1, {p['prompt_tokens']}-token prompt + {p['generated_tokens']} "
            f"generated, {p['repeats']} repeats; carbon {where} {c.get('grid_intensity'):g} gCO2eq/kWh, year "
            f"{c.get('year') or 'unknown'}")  # fmt: skip


def _j(record: dict[str, Any] | None) -> str:
    if not record or record.get("j_per_1k_tokens") is None:
        return "-"
    g = record.get("g_co2eq_per_1k_tokens")
    return f"{record['j_per_1k_tokens']:.4g} J" + (f" ({g:.3g} g CO2eq)" if g is not None else "")


def payback_verdict(pb: dict[str, Any]) -> str:
    """The verdict: 'repays after N tokens', 'never' or 'unknown: why', with the noise caveat."""
    if pb["status"] == "unknown":
        return f"unknown: {pb['missing']}"
    tokens, saved = pb["break_even_tokens"], pb["saving_fraction"]
    estimate = "never" if tokens is None else f"repays after {tokens:.3g} generated tokens"
    if pb["status"] == "unresolved":
        spread = pb["noise_fraction"]
        return (f"unresolved: per-token difference {-saved:+.1%} vs dense is within the +/-{spread:.0%} spread of "
                f"repeated measurements (point estimate: {estimate}; `prunelab bench` measures longer)")  # fmt: skip
    if tokens is None:
        return f"never: not cheaper per token ({-saved:+.1%} vs dense)"
    return f"{estimate} ({saved:.1%} saved per token)"


def print_payback(what: str, pruned_name: str, pb: dict[str, Any] | None) -> None:
    """The inference energy per 1k generated tokens of the dense and the trained model, and the break-even."""
    if not pb:
        return
    shown = pb.get("dense") or pb.get("pruned")
    if shown:
        print(f"inference energy per 1k generated tokens [{_inference_label(shown)}]: dense {_j(pb.get('dense'))}, "
              f"{pruned_name} {_j(pb.get('pruned'))}")  # fmt: skip
    print(f"{what} energy {_verdict_prefix(pb)}{payback_verdict(pb)}")
    for note in pb.get("notes") or []:
        print(f"  note: {note}")


def _verdict_prefix(pb: dict[str, Any]) -> str:
    joules = pb["training"].get("joules")
    return f"({joules:.4g} J) " if joules is not None else ""


def print_levels_payback(report: dict[str, Any]) -> None:
    """train-aware: the trained dense model's inference energy and, per level, the pruned one's and the break-even."""
    inference, paybacks = report.get("inference") or {}, report["training"].get("payback") or []
    dense = inference.get("dense")
    if not paybacks:
        return
    if dense is None:
        print(f"training break-even: {inference.get('missing') or paybacks[0]['missing']}")
        return
    print(f"inference energy per 1k generated tokens [{_inference_label(dense)}]: dense {_j(dense)}; "
          f"{inference['measured_variant']} variant by compression, and when the training energy is "
          "repaid:")  # fmt: skip
    for pb in paybacks:
        print(f"{pb['compression']:11.0%}  {_j(pb.get('pruned')):>26s}  training {payback_verdict(pb)}")
    for note in paybacks[0].get("notes") or []:
        print(f"  note: {note}")
