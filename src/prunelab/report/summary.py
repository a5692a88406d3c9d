"""The table of points shared by the HTML page and the terminal summary, and the markdown summary itself."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prunelab.report.metrics import metric
from prunelab.report.pareto import Row, Selection, ppl_change, value

# Metric columns in display order; a column appears only when some point has that metric.
TABLE_METRICS = (
    "perplexity", "zeroshot_mean", "compact_size_mb", "size_mb", "nonzero_params", "params", "decode_tokens_per_s",
    "prefill_ms", "energy_j_per_token", "g_co2eq_per_1k_tokens", "achieved_sparsity", "prune_seconds",
)  # fmt: skip
SUMMARY_METRICS = ("perplexity", "zeroshot_mean", "compact_size_mb", "decode_tokens_per_s", "energy_j_per_token")


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    get: Callable[[Row], Any]  # the raw value (sort key); None = not measured
    show: Callable[[Row], str]  # the text shown


def is_estimate(row: Row) -> bool:
    return bool((row.details.get("energy") or {}).get("is_estimate"))


def columns(rows: Sequence[Row], names: Sequence[str] = TABLE_METRICS) -> list[Column]:
    """Point, pattern, sparsity, then every metric of `names` that some row has; perplexity gets its change."""
    dense = next((r for r in rows if r.method == "dense"), None)
    cols = [
        Column("label", "point", lambda r: r.label, lambda r: r.label),
        Column("pattern", "pattern", lambda r: r.pattern, lambda r: r.pattern),
        Column("sparsity", "sparsity", lambda r: r.sparsity, lambda r: f"{r.sparsity:.3g}"),
    ]
    for name in names:
        if not any(value(r, name) is not None for r in rows):
            continue
        m = metric(name)
        header = f"{m.label}{f' [{m.unit}]' if m.unit else ''}"

        def show(r: Row, m: Any = m) -> str:
            text = m.format(value(r, m.name))
            if m.name.startswith(("energy", "g_co2eq")) and value(r, m.name) is not None and is_estimate(r):
                text += " (estimate)"
            return text

        cols.append(Column(name, header, lambda r, n=name: value(r, n), show))
        if name == "perplexity" and dense is not None:
            cols.append(
                Column(
                    "ppl_change",
                    "perplexity vs dense",
                    lambda r: ppl_change(r, dense),
                    lambda r: "-" if ppl_change(r, dense) is None else f"{ppl_change(r, dense):+.1%}",
                )
            )
    return cols


def markdown_summary(
    rows: Sequence[Row], frontier: Sequence[Row], selection: Selection | None, title: str = "Sweep"
) -> str:
    """A compact markdown table for the terminal: the headline metrics, frontier and recommendation marked."""
    names = list(SUMMARY_METRICS)
    if selection is not None and selection.cost not in names:
        names.append(selection.cost)
    cols = columns(rows, names)
    on_front = {id(r) for r in frontier}
    lines = [f"## {title}: {len(rows)} points", ""]
    lines.append("| " + " | ".join([c.header for c in cols] + ["frontier"]) + " |")
    lines.append("|" + "---|" * (len(cols) + 1))
    for r in rows:
        mark = "yes" if id(r) in on_front else ""
        if selection is not None and r is selection.row:
            mark = "**recommended**"
        lines.append("| " + " | ".join([c.show(r) for c in cols] + [mark]) + " |")
    lines.append("")
    if selection is not None:
        lines.append(selection.sentence)
    if any(is_estimate(r) for r in rows):
        lines.append("Energy and carbon figures marked (estimate) come from a power model, not from a meter.")
    return "\n".join(lines)
