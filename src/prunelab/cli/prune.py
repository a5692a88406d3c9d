"""`prunelab prune`: parse -> PruneConfig (+ ModelConfig, EvalConfig) -> api.prune_job / prune_streaming_job."""

from __future__ import annotations

import argparse
import json
from typing import Any

from prunelab.cli._base import (
    add_field,
    footprint_args,
    footprint_config,
    inference_args,
    inference_config,
    model_args,
    model_config,
    values,
)
from prunelab.cli.recover import print_recovery, print_recovery_footprint, recover_args, recover_config
from prunelab.config.base import build
from prunelab.config.evaluation import PRUNE_EVAL_WINDOWS, EvalConfig
from prunelab.config.methods import StructuredOptions
from prunelab.config.prune import DEFAULT_SPARSITY, STAGE_SETTINGS, PruneConfig
from prunelab.errors import PrunelabError
from prunelab.pruning import METHODS, STAGES

# PruneConfig fields with a flag of their own (`options` has --option and the structured shortcuts).
PRUNE_FLAGS = [f for f in PruneConfig.model_fields if f != "options"]
SHORTCUTS = ("target", "importance", "compensate", "recover_steps")  # structured options with a flag
# The flag of each stage setting -> its stage: a setting given without its stage is an error, not ignored.
STAGE_FLAGS = {f: stage for stage, fields in STAGE_SETTINGS.items() for f in fields}


class _Given(argparse.Action):
    """Store the value and note that the flag was given (its default is the config's, so it cannot tell)."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.given = [*getattr(namespace, "given", []), self.dest]


def register(sub: Any) -> None:
    p = sub.add_parser("prune", help="prune a model, evaluate before/after, save it")
    model_args(p, device_map=True)
    for name in PRUNE_FLAGS:
        if name == "method":
            add_field(p, PruneConfig, name, choices=list(METHODS), metavar="METHOD",
                      help="see `prunelab methods`: " + ", ".join(METHODS))  # fmt: skip
        elif name == "sparsity":
            add_field(p, PruneConfig, name, help=f"fraction of weights removed (default {DEFAULT_SPARSITY} when "
                      "unstructured; 1 - N/M for an N:M pattern)")  # fmt: skip
        elif name in ("targets", "ignore"):
            add_field(p, PruneConfig, name, metavar="LAYER")
        elif name == "stages":
            add_field(p, PruneConfig, name, metavar="STAGE", help="stages run with a layer-wise method, in order: "
                      + ", ".join(STAGES))  # fmt: skip
            p.add_argument(
                "--refine",
                action="append",
                default=[],
                metavar="STAGE",
                help="refine each layer's mask after the method, e.g. dsnot (adds it to --stages)",
            )
            p.add_argument(
                "--reconstruct",
                action="store_true",
                help="block-wise reconstruction after each block is pruned (--reconstruct-steps)",
            )
        elif name in STAGE_FLAGS:
            info = PruneConfig.model_fields[name]
            text = f"{info.description} (default: {info.get_default()}"
            text += "; implies --reconstruct)" if name == "reconstruct_steps" else ")"
            add_field(p, PruneConfig, name, help=text, action=_Given)
        else:
            add_field(p, PruneConfig, name)
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="method option, repeatable")
    structured = p.add_argument_group("structured method (shortcuts for its --option values)")
    for name in SHORTCUTS:
        info = StructuredOptions.model_fields[name]
        method_default = info.get_default()
        help_text = f"{info.description} (method default: {method_default})"
        add_field(structured, StructuredOptions, name, default=None, help=help_text)
    p.add_argument("--ppl", nargs="*", default=None, help="perplexity sources (default shakespeare; none if streaming)")
    p.add_argument("--no-eval-before", action="store_true", help="skip the dense perplexity")
    p.add_argument("--output", default=None, help="folder for the pruned model (HF format + prunelab.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument(
        "--streaming",
        action="store_true",
        help="load, prune and write one block at a time, for models larger than memory (local safetensors folder)",
    )
    add_field(p, EvalConfig, "seqlen")
    add_field(p, EvalConfig, "max_windows", default=PRUNE_EVAL_WINDOWS)
    recover_args(p)
    footprint_args(p, "a training step of the method (--recover-steps)")
    inference_args(p, "the --recover footprint")
    p.set_defaults(run=run)


def parse_options(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PrunelabError(f"--option expects KEY=VALUE, got '{item}'")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def prune_options(args: argparse.Namespace) -> dict[str, Any]:
    """--option values plus the structured shortcuts, which only that method accepts."""
    options = parse_options(args.option)
    shortcuts = {k: getattr(args, k) for k in SHORTCUTS if getattr(args, k) is not None}
    if shortcuts and not METHODS[args.method].capabilities.changes_shapes:
        flags = ", ".join("--" + k.replace("_", "-") for k in shortcuts)
        raise PrunelabError(f"{flags} only apply to --method structured (got --method {args.method})")
    return {**options, **shortcuts}


def prune_stages(args: argparse.Namespace) -> list[str]:
    """--stages, then --refine, then reconstruct (--reconstruct or --reconstruct-steps); each once."""
    given = getattr(args, "given", [])
    reconstruct = args.reconstruct or "reconstruct_steps" in given
    stages = list(dict.fromkeys([*args.stages, *args.refine, *(["reconstruct"] if reconstruct else [])]))
    for name in given:
        if STAGE_FLAGS[name] not in stages:
            flag = name.replace("_", "-")
            raise PrunelabError(f"--{flag} is a setting of stage '{STAGE_FLAGS[name]}', which is not selected")
    return stages


def prune_config(args: argparse.Namespace) -> PruneConfig:
    fields = values(args, PRUNE_FLAGS)
    if fields["sparsity"] is None and fields["pattern"] == "unstructured":
        fields["sparsity"] = DEFAULT_SPARSITY
    fields["stages"] = prune_stages(args)
    return build(PruneConfig, {**fields, "options": prune_options(args)}, "prune settings")


def run(args: argparse.Namespace) -> int:
    from prunelab import api

    cfg = prune_config(args)
    source = model_config(args)
    recovery = recover_config(args)
    if recovery is not None and (args.streaming or args.device_map):
        raise PrunelabError("--recover needs the whole model in memory on one device (no --streaming/--device-map)")
    if args.streaming:
        if args.ppl or args.device_map:
            flag = "--ppl (evaluate the output with `prunelab eval`)" if args.ppl else "--device-map"
            raise PrunelabError(f"--streaming does not take {flag}")
        report = api.prune_streaming_job(cfg, source, args.output, args.overwrite, args.json_path)
    else:
        from prunelab.api.recover import kept_on_interrupt

        ppl = ["shakespeare"] if args.ppl is None else args.ppl
        ev_fields = {"ppl": ppl, "seqlen": args.seqlen, "max_windows": args.max_windows}
        ev = build(EvalConfig, ev_fields, "evaluation settings") if ppl else None
        with kept_on_interrupt(args.output if recovery is not None else None):  # a resumable checkpoint stays
            report = api.prune_job(cfg, source, ev, args.output, args.overwrite, not args.no_eval_before,
                                   args.json_path, recovery, args.teacher, footprint_config(args),
                                   inference_config(args))  # fmt: skip
    print_prune(report)
    return 0


def print_prune(report: dict[str, Any]) -> None:
    before, after = report.get("perplexity_before", {}), report.get("perplexity", {})
    if report["kind"] == "structured":  # units removed, not weights zeroed
        print(
            f"{report['method']} {report['pattern']} sparsity {report['sparsity']:.3g}: removed "
            f"{report['achieved_reduction']:.4f} of {report['block_params_before']:,} decoder-block params, "
            f"params {report['params_before']:,} -> {report['params_after']:,}, "
            f"FLOPs/token x{report['flops_ratio']:.3f} in {report['prune_seconds']:.1f} s, "
            f"peak RSS {report['peak_rss_mb']:.0f} MiB"
        )
    else:
        print(
            f"{report['method']} {report['pattern']} sparsity {report['sparsity']:.3g}: "
            f"achieved {report['achieved_sparsity']:.4f} of {report['prunable_params']:,} prunable weights "
            f"in {report['prune_seconds']:.1f} s, peak RSS {report['peak_rss_mb']:.0f} MiB"
        )
    allocation = report.get("allocation") or {}
    if allocation.get("scheme", "uniform") != "uniform":
        blocks = allocation["block_sparsity"]
        chosen = (report.get("owl_auto") or {}).get("chosen")
        auto = f" (auto: lambda {chosen['owl_lambda']:g}, M {chosen['owl_m']:g})" if chosen else ""
        print(f"allocation {allocation['scheme']}{auto}: block sparsity {min(blocks):.3f} .. {max(blocks):.3f}")
    if report.get("recovery"):
        print_recovery(report["recovery"])
    for source, value in after.items():
        b = before.get(source)
        change = f"{b:.3f} -> {value:.3f} ({(value / b - 1) * 100:+.1f}%)" if b else f"{value:.3f}"
        print(f"perplexity [{source}]: {change}")
    if report.get("recovery"):
        print_recovery_footprint(report["recovery"])
    if report.get("output"):
        print(f"saved to {report['output']}")
