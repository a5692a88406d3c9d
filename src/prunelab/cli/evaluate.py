"""`prunelab eval`: parse -> EvalConfig (+ ModelConfig) -> api.eval_job -> print."""

from __future__ import annotations

import argparse
from typing import Any

from prunelab.cli._base import add_field, model_args, model_config
from prunelab.cli._runtime import print_runtime, runtime_args, runtime_config
from prunelab.config.base import build
from prunelab.config.evaluation import EvalConfig
from prunelab.errors import PrunelabError


def register(sub: Any) -> None:
    p = sub.add_parser("eval", help="perplexity and zero-shot accuracy of a model")
    model_args(p, device_map=True, runtime=True)
    add_field(
        p,
        EvalConfig,
        "ppl",
        default=None,
        help="sources: wikitext2[:PATH], shakespeare, FILE (default shakespeare; with --tasks, only those named)",
    )
    add_field(
        p,
        EvalConfig,
        "tasks",
        default=None,
        help="zero-shot tasks, comma- or space-separated: lm-evaluation-harness names, or files of --task-data "
        "(default none)",
    )
    add_field(p, EvalConfig, "task_data", help="offline: folder of NAME.jsonl task files ('--tasks all' = each)")
    add_field(p, EvalConfig, "limit", help="zero-shot: first N examples of each task")
    add_field(p, EvalConfig, "batch_size")
    add_field(p, EvalConfig, "seqlen")
    add_field(
        p,
        EvalConfig,
        "max_windows",
        help="cap on windows per source (default: none, every window: "
        "wikitext2's test split at --seqlen 512 has 595, ~1 s each for the default model on a quiet 2-core CPU; "
        "`prune` evaluates 16); a run expected to last over a minute logs its estimate after the first batch",
    )
    runtime_args(p)
    p.set_defaults(run=run)


def eval_config(args: argparse.Namespace) -> EvalConfig:
    tasks = [t.strip() for item in args.tasks or [] for t in item.split(",") if t.strip()]
    if args.tasks and not tasks:  # `--tasks ,` would otherwise run perplexity only, as if no task was asked for
        raise PrunelabError(f"--tasks names no task: {' '.join(args.tasks)!r}")
    fields: dict[str, Any] = {
        "seqlen": args.seqlen,
        "max_windows": args.max_windows,
        "batch_size": args.batch_size,
        "tasks": tasks,
        "task_data": args.task_data,
        "limit": args.limit,
    }
    if args.ppl is not None:
        fields["ppl"] = args.ppl
    return build(EvalConfig, fields, "evaluation settings")


def run(args: argparse.Namespace) -> int:
    from prunelab import api

    report = api.eval_job(eval_config(args), model_config(args), args.json_path, runtime_config(args))
    print_runtime(report.get("runtime"))
    for source, value in report["perplexity"].items():
        ev = report["perplexity_eval"][source]
        print(f"perplexity [{source}]: {value:.3f} ({ev['windows']} x {ev['seqlen']} tokens, {ev['seconds']:.1f} s)")
    print_zeroshot(report)
    return 0


def print_zeroshot(report: dict[str, Any]) -> None:
    for task, r in report.get("zeroshot", {}).items():
        err = r["stderr"].get("acc")
        norm = f", acc_norm {r['acc_norm']:.4f}" if r["acc_norm"] is not None else ""
        print(
            f"zero-shot [{task}]: acc {r['acc']:.4f}{f' ± {err:.4f}' if err is not None else ''}{norm} "
            f"(n={r['n']}, {r['seconds']:.1f} s, {r['examples_per_s']:.1f} examples/s)"
        )
    if report.get("zeroshot_mean") is not None:
        print(f"zero-shot mean acc: {report['zeroshot_mean']:.4f} over {len(report['zeroshot'])} tasks")
