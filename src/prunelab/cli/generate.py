"""`prunelab generate`: parse -> ModelConfig + RuntimeConfig (one per compared setting) -> api.generate_job -> print.

Greedy decoding, so two settings differ only by what the setting changes. `--compare M2` adds a second model;
`--compare-sparsity S2` a second run at another activation sparsity (of M2 if given, else of the same model).
"""

from __future__ import annotations

import argparse
from typing import Any

from prunelab.cli._base import model_args, model_config
from prunelab.cli._runtime import runtime_args, runtime_config
from prunelab.config.base import build
from prunelab.config.runtime import RuntimeConfig


def register(sub: Any) -> None:
    p = sub.add_parser("generate", help="greedy continuations of a prompt, optionally two settings one after another")
    model_args(p)
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per run")
    runtime_args(p)
    p.add_argument("--compare", default=None, metavar="M2", help="a second model to continue the same prompt")
    p.add_argument("--compare-sparsity", type=float, default=None, metavar="S2",
                   help="activation sparsity of the compared run (default: --activation-sparsity)")  # fmt: skip
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from prunelab import api
    from prunelab.errors import PrunelabError

    if args.max_new_tokens < 1:
        raise PrunelabError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    rt = runtime_config(args)
    source = model_config(args)
    runs = [(_label(args.model, rt), source, rt)]
    if args.compare is not None or args.compare_sparsity is not None:
        level = args.compare_sparsity if args.compare_sparsity is not None else rt.activation_sparsity
        rt2 = build(RuntimeConfig, {"activation_sparsity": level, "sparse_kernels": rt.sparse_kernels},
                    "run-time settings of --compare")  # fmt: skip
        source2 = source.model_copy(update={"model": args.compare}) if args.compare is not None else source
        runs.append((_label(source2.model, rt2), source2, rt2))
    report = api.generate_job(runs, args.prompt, args.max_new_tokens, args.json_path)
    print(f"prompt: {report['prompt']}")
    for r in report["runs"]:
        print(f"\n[{r['label']}] ({r['tokens']} tokens)")
        print(f"{report['prompt']}{r['text']}")
    return 0


def _label(model: str | None, rt: RuntimeConfig) -> str:
    return f"{model or 'default'} @ activation sparsity {rt.activation_sparsity:g}"
