"""`prunelab sweep` and `prunelab report`: run (or resume, or only plan) a grid; summarise a sweep folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunelab._util import check_writable, write_json_atomic, write_text_atomic
from prunelab.errors import PrunelabError
from prunelab.report.build import build_report
from prunelab.report.pareto import Budget
from prunelab.sweep import RayOptions, ResultStore, expand_grid, load_sweep_config, run_sweep
from prunelab.sweep.grid import flat_settings, varying_settings
from prunelab.sweep.store import DB_NAME


def plan_sweep(config_path: str, out: str | None = None) -> dict[str, Any]:
    """The resolved points of a sweep config, with the settings that vary between them; loads no model.

    With `out`, points already stored in that sweep folder are marked done.
    """
    points = expand_grid(load_sweep_config(config_path))
    done: set[str] = set()
    if out is not None and (Path(out) / DB_NAME).is_file():
        with ResultStore(out, write=False) as store:
            done = store.done_ids()
    keys = varying_settings(points)
    rows = []
    for p in points:
        flat = flat_settings(p)
        settings = {k: flat.get(k) for k in keys if flat}
        rows.append({"index": p.index, **p.summary(), "done": p.point_id in done, "settings": settings})
    return {"points": rows, "varying": keys, "total": len(points), "done": sum(r["done"] for r in rows)}


def sweep_job(
    config_path: str,
    out: str,
    executor: str = "local",
    ray: RayOptions | None = None,
    write_report: bool = True,
) -> dict[str, Any]:
    """Run (or resume) a sweep into `out`, then write `out/report.html` (see prunelab.sweep, prunelab.report)."""
    cfg = load_sweep_config(config_path)
    outcome = run_sweep(cfg, out, executor, ray or RayOptions())
    result: dict[str, Any] = {"outcome": outcome.to_dict()}
    if write_report:
        try:
            result["report"] = report_job(out, html_path=None)
        except PrunelabError as e:  # e.g. the dense point failed: the sweep itself still finished
            result["report_error"] = str(e)
    return result


def report_job(
    sweep_dir: str,
    html_path: str | None = None,
    max_ppl_increase: float | None = None,
    min_accuracy: float | None = None,
    cost: str | None = None,
    json_path: str | None = None,
    write_html: bool = True,
) -> dict[str, Any]:
    """Frontier, recommendation, markdown summary and HTML page (default SWEEP_DIR/report.html) of a sweep."""
    budget = Budget(max_ppl_increase, min_accuracy)  # a nan or negative budget fails before the store is opened
    check_writable(html_path, "file", "--html")
    check_writable(json_path, "file", "--json")
    with ResultStore(sweep_dir, write=False) as store:
        rows = store.records()
        meta = {k: store.get_meta(k) for k in ("config", "points", "environment", "runs")}
    if not rows:
        raise PrunelabError(f"'{sweep_dir}' has no finished point yet")
    title = f"prunelab sweep: {(meta.get('config') or {}).get('name') or Path(sweep_dir).resolve().name}"
    report = build_report(rows, meta, budget, cost, write_html, title)
    result: dict[str, Any] = {**report.to_dict(), "markdown": report.markdown, "points": [r.to_dict() for r in rows]}
    if report.html is not None:
        target = Path(html_path) if html_path else Path(sweep_dir) / "report.html"
        write_text_atomic(target, report.html)
        result["html"] = str(target)
    if json_path:
        write_json_atomic(json_path, {k: v for k, v in result.items() if k != "markdown"})
    return result
