"""Assemble a sweep report from stored points: frontier, recommendation, markdown, and the HTML page with plots."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prunelab.report.pareto import Budget, Row, Selection, pareto_front, select
from prunelab.report.plots import matplotlib_missing, plot_costs, plot_pareto, plot_quality
from prunelab.report.summary import markdown_summary

ENV_KEYS = ("cpu", "cpu_count", "torch_threads", "memory_total_mb", "gpu", "device", "dtype", "platform", "python",
            "torch", "transformers", "prunelab")  # fmt: skip


@dataclass
class Report:
    quality: str
    selection: Selection
    frontier: list[Row]
    markdown: str
    html: str | None
    html_skipped: str | None  # why there is no HTML (matplotlib missing)
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "quality": self.quality,
            "cost": self.selection.cost,
            "recommendation": self.selection.to_dict(),
            "frontier": [r.label for r in self.frontier],
            "notes": self.notes,
            "html_skipped": self.html_skipped,
        }


def environment(rows: Sequence[Row], meta_env: dict[str, Any] | None) -> dict[str, Any]:
    """The machine: what the driver recorded, completed by the benchmark's view of the dense point's hardware."""
    env = dict(meta_env or {})
    dense = next((r for r in rows if r.method == "dense"), None)
    if dense is not None and isinstance(dense.details.get("hardware"), dict):
        env.update(dense.details["hardware"])
    hosts = sorted({getattr(r, "host", "") for r in rows} - {""})
    out = {k: env.get(k) for k in ENV_KEYS if env.get(k) is not None}
    if "memory_total_mb" in out:
        out["memory_total_mb"] = f"{float(out['memory_total_mb']):.0f}"
    if hosts:
        out["hosts"] = ", ".join(hosts)
    return out


def notes(rows: Sequence[Row], meta: dict[str, Any], selection: Selection) -> list[str]:
    out = []
    planned = meta.get("points") or []
    have = {getattr(r, "point_id", None) for r in rows}
    missing = [p["label"] for p in planned if p.get("point_id") not in have]
    if missing:
        out.append(f"{len(missing)} of {len(planned)} grid points are not in the store yet: {', '.join(missing)}.")
    runs = sorted({r.details.get("run") for r in rows if r.details.get("run") is not None})
    if len(runs) > 1:
        out.append(f"Points were measured in {len(runs)} separate runs of `prunelab sweep` (resumed); speed and energy "
                   "compare most reliably within one run on an otherwise idle machine.")  # fmt: skip
    hosts = {getattr(r, "host", "") for r in rows} - {""}
    if len(hosts) > 1:
        out.append(f"Points ran on {len(hosts)} different hosts; compare speed and energy only within one host.")
    dense_zeros = [
        r.label for r in rows if any("GGUF stores the zeros dense" in str(n) for n in r.details.get("notes", []))
    ]
    if dense_zeros:
        out.append(f"{len(dense_zeros)} unstructured/N:M points are exported to GGUF, which stores their zeros dense: "
                   f"no bytes saved at their quant ({', '.join(dense_zeros)}).")  # fmt: skip
    out.extend(str(n) for n in selection.row.details.get("notes", []))
    return out


def build_report(
    rows: Sequence[Row],
    meta: dict[str, Any],
    budget: Budget,
    cost: str | None = None,
    with_html: bool = True,
    title: str = "prunelab sweep",
) -> Report:
    """Frontier of quality (perplexity, or zero-shot accuracy with --min-accuracy) against the cost, and the pick."""
    from prunelab.report.html import render_html

    selection = select(rows, budget, cost)
    quality = "zeroshot_mean" if budget.min_accuracy is not None and budget.max_ppl_increase is None else "perplexity"
    frontier = pareto_front(rows, [quality, selection.cost])
    extra = notes(rows, meta, selection)
    md = markdown_summary(rows, frontier, selection, title)
    if extra:
        md += "\n" + "\n".join(f"- {n}" for n in extra)
    html = None
    skipped = matplotlib_missing() if with_html else "not requested"
    if with_html and skipped is None:
        plots = {
            "plot-quality": plot_quality(rows),
            "plot-costs": plot_costs(rows),
            "plot-pareto": plot_pareto(rows, frontier, selection, quality),
        }
        cfg = meta.get("config") or {}
        subtitle = f"model {cfg.get('model') or 'default (SmolLM2-135M-Instruct)'}, {len(rows)} points"
        ev = cfg.get("evaluation") or {}
        if ev:
            subtitle += (f"; perplexity on {', '.join(ev.get('ppl', []))} ({ev.get('max_windows') or 'all'} windows x "
                         f"{ev.get('seqlen')} tokens)")  # fmt: skip
        page_meta = {"title": title, "subtitle": subtitle, "environment": environment(rows, meta.get("environment")),
                     "notes": extra}  # fmt: skip
        html = render_html(rows, frontier, selection, plots, page_meta)
    return Report(quality, selection, frontier, md, html, skipped, extra)
