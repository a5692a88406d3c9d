"""`prunelab sweep`: parse -> api.sweep_job (or api.plan_sweep with --plan) -> print."""

from __future__ import annotations

import argparse
from typing import Any

from prunelab.cli.report import print_report
from prunelab.config.sweep import EXECUTORS, RayOptions

_RAY = RayOptions()


def register(sub: Any) -> None:
    p = sub.add_parser("sweep", help="run (or resume) a grid of methods x sparsities x patterns; see docs/sweep.md")
    p.add_argument("config", help="sweep YAML (see examples/sweep-quick.yaml)")
    p.add_argument("--out", required=True, help="sweep folder: results.sqlite, results.csv, report.html")
    p.add_argument("--plan", action="store_true", help="print the resolved points and exit (loads no model)")
    p.add_argument("--executor", default=EXECUTORS[0], choices=EXECUTORS, help="local (in order) or ray")
    p.add_argument("--ray-address", default=_RAY.address, help="Ray cluster to join (default: start a local one)")
    p.add_argument("--num-cpus", type=float, default=_RAY.num_cpus, help="ray: CPUs per point")
    p.add_argument("--num-gpus", type=float, default=_RAY.num_gpus, help="ray: GPUs per point")
    p.add_argument("--json", dest="json_path", default=None, help="write the outcome and report summary here")
    p.set_defaults(run=run)


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else "-" if value is None else str(value)


def print_plan(plan: dict[str, Any]) -> None:
    print(f"{plan['total']} points ({plan['done']} already done); varying: {', '.join(plan['varying']) or 'nothing'}")
    width = max(len(p["label"]) for p in plan["points"])
    for p in plan["points"]:
        settings = "  ".join(f"{k}={_show(v)}" for k, v in p["settings"].items())
        mark = "done" if p["done"] else "todo"
        print(f"{p['index']:>4}  {mark}  {p['point_id']}  {p['label']:<{width}}  {settings}".rstrip())


def run(args: argparse.Namespace) -> int:
    from prunelab import api
    from prunelab._util import write_json_atomic

    if args.plan:
        plan = api.plan_sweep(args.config, args.out)
        print_plan(plan)
        if args.json_path:
            write_json_atomic(args.json_path, plan)
        return 0
    ray = RayOptions(args.ray_address, args.num_cpus, args.num_gpus)
    result = api.sweep_job(args.config, args.out, args.executor, ray)
    outcome = result["outcome"]
    print(
        f"sweep {outcome['folder']}: {outcome['ran']} points run, {outcome['already_done']} already done, "
        f"{len(outcome['failed'])} failed, of {outcome['total']} ({outcome['seconds']:.0f} s)"
    )
    for label, error in outcome["failed"]:
        print(f"failed: {label}: {error}")
    if args.json_path:
        write_json_atomic(args.json_path, {k: v for k, v in result.items() if k != "markdown"})
    if result.get("report"):
        print_report(result["report"])
    elif result.get("report_error"):
        print(f"no report: {result['report_error']}")
    return 1 if outcome["failed"] else 0
