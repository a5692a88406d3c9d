"""`prunelab report`: parse -> api.report_job -> print the markdown summary."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("report", help="Pareto frontier, recommendation and HTML report of a sweep folder")
    p.add_argument("sweep_dir", help="a folder written by `prunelab sweep`")
    p.add_argument("--html", default=None, help="HTML file to write (default SWEEP_DIR/report.html)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--max-ppl-increase", type=float, default=None, help="relative budget, e.g. 0.10 (default)")
    budget.add_argument("--min-accuracy", type=float, default=None, help="minimum mean zero-shot accuracy (default "
                        "none), e.g. 0.45")  # fmt: skip
    p.add_argument("--cost", default=None, help="cost to minimise: compact_size_mb (default), decode_tokens_per_s, ...")
    p.add_argument("--json", dest="json_path", default=None, help="write frontier, recommendation and points here")
    p.set_defaults(run=run)


def print_report(report: dict[str, Any]) -> None:
    print(report["markdown"])
    if report.get("html"):
        print(f"report: {report['html']}")
    elif report.get("html_skipped"):
        print(f"no HTML report: {report['html_skipped']}")


def run(args: argparse.Namespace) -> int:
    from prunelab import api

    report = api.report_job(args.sweep_dir, args.html, args.max_ppl_increase, args.min_accuracy, args.cost,
                            args.json_path)  # fmt: skip
    print_report(report)
    return 0
