"""The table of points shared by the HTML page and the terminal summary, and the markdown summary itself."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prunelab.measurement.footprint import break_even_tokens
from prunelab.report.metrics import metric
from prunelab.report.pareto import Row, Selection, ppl_change, value

# Metric columns in display order; a column appears only when some point has that metric.
TABLE_METRICS = (
    "perplexity", "zeroshot_mean", "compact_size_mb", "size_mb", "nonzero_params", "params", "decode_tokens_per_s",
    "prefill_ms", "energy_j_per_token", "g_co2eq_per_1k_tokens", "training_energy_j", "training_g_co2eq",
    "achieved_sparsity", "prune_seconds",
)  # fmt: skip
ESTIMATED = ("energy", "g_co2eq", "training_")  # metrics that carry the point's energy estimate label
BREAK_EVEN = "training_break_even_tokens"  # derived column, after the last training_* column shown
SUMMARY_METRICS = ("perplexity", "zeroshot_mean", "compact_size_mb", "decode_tokens_per_s", "energy_j_per_token")


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    get: Callable[[Row], Any]  # the raw value (sort key); None = not measured
    show: Callable[[Row], str]  # the text shown


def is_estimate(row: Row) -> bool:
    return bool((row.details.get("energy") or {}).get("is_estimate"))


def training_is_estimate(row: Row) -> bool:
    """Whether any of the point's metered training spans (`details["training"]`) is a power-model estimate."""
    spans = row.details.get("training") or []
    return any(bool((s.get("energy") or {}).get("is_estimate")) for s in spans if isinstance(s, dict))


def _estimated(row: Row, name: str) -> bool:
    return training_is_estimate(row) if name.startswith("training_") else is_estimate(row)


def break_even(row: Row, dense: Row | None) -> float | None:
    """Generated tokens until `row`'s training energy is repaid by its per-token saving over `dense`; inf for
    "never" (not cheaper per token); None when something is not measured (`footprint.break_even_tokens`)."""
    train, e_row = value(row, "training_energy_j"), value(row, "energy_j_per_token")
    e_dense = value(dense, "energy_j_per_token") if dense is not None else None
    if train is None or e_row is None or e_dense is None or min(train, e_row, e_dense) < 0:
        return None
    tokens = break_even_tokens(train, e_dense, e_row)
    return math.inf if tokens is None else tokens


def _break_even_column(rows: Sequence[Row], dense: Row | None) -> Column | None:
    """The break-even column, when some point has both a training energy and an inference energy to compare."""
    if dense is None or not any(break_even(r, dense) is not None for r in rows):
        return None
    m = metric(BREAK_EVEN)

    def show(r: Row) -> str:
        tokens = break_even(r, dense)
        text = "-" if tokens is None else ("never" if math.isinf(tokens) else m.format(tokens))
        estimated = is_estimate(r) or training_is_estimate(r) or is_estimate(dense)
        return text + (" (estimate)" if tokens is not None and estimated else "")

    return Column(BREAK_EVEN, f"{m.label} [{m.unit}]", lambda r: break_even(r, dense), show)


def columns(rows: Sequence[Row], names: Sequence[str] = TABLE_METRICS, dense: Row | None = None) -> list[Column]:
    """Point, pattern, sparsity, then every metric of `names` that some row has; perplexity gets its change, the
    training energy its break-even against `dense` (default: the dense row among `rows`) when both are measured."""
    dense = dense or next((r for r in rows if r.method == "dense"), None)
    cols = [
        Column("label", "point", lambda r: r.label, lambda r: r.label),
        Column("pattern", "pattern", lambda r: r.pattern, lambda r: r.pattern),
        Column("sparsity", "sparsity", lambda r: r.sparsity, lambda r: f"{r.sparsity:.3g}"),
    ]
    shown = [n for n in names if any(value(r, n) is not None for r in rows)]
    last_training = next((n for n in reversed(shown) if n.startswith("training_")), None)
    for name in shown:
        m = metric(name)
        header = f"{m.label}{f' [{m.unit}]' if m.unit else ''}"

        def show(r: Row, m: Any = m) -> str:
            text = m.format(value(r, m.name))
            if m.name.startswith(ESTIMATED) and value(r, m.name) is not None and _estimated(r, m.name):
                text += " (estimate)"
            return text

        cols.append(Column(name, header, lambda r, n=name: value(r, n), show))
        if name == last_training and "training_energy_j" in shown:  # the break-even after the training figures
            extra = _break_even_column(rows, dense)
            cols.extend([extra] if extra is not None else [])
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
    if any(value(r, "training_energy_j") is not None for r in rows):  # the one-time cost, beside the per-token one
        names.append("training_energy_j")
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
    if any(is_estimate(r) or training_is_estimate(r) for r in rows):
        lines.append("Energy and carbon figures marked (estimate) come from a power model, not from a meter.")
    return "\n".join(lines)
