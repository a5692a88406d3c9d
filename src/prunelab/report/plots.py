"""The report's plots, drawn with matplotlib into PNG bytes (no window, no global pyplot state).

matplotlib is an optional extra (`pip install 'prunelab[report]'`); `require_matplotlib` turns its absence into a
one-line hint. Every plot is built on `matplotlib.figure.Figure` directly, which needs no GUI backend, so plots
work on headless machines and inside worker processes.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Sequence
from typing import Any

from prunelab.errors import PrunelabError
from prunelab.report.metrics import metric
from prunelab.report.pareto import Row, Selection, value

INSTALL_HINT = "pip install 'prunelab[report]'  (or: pip install 'matplotlib>=3.7')"
_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]
DENSE_COLOR = "#000000"
NOISE_LABEL = "dense +/- IQR (noise)"
TIMED = ("decode_tokens_per_s", "prefill_ms")  # metrics whose repeats a point keeps in details["latency"]


def matplotlib_missing() -> str | None:
    """None when matplotlib can be imported, else the one-line install hint."""
    if importlib.util.find_spec("matplotlib") is None:
        return f"plots and the HTML report need matplotlib: {INSTALL_HINT}"
    return None


def require_matplotlib() -> None:
    hint = matplotlib_missing()
    if hint:
        raise PrunelabError(hint)


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def series_colors(rows: Sequence[Row]) -> dict[str, str]:
    """A stable color per series, in order of first appearance (dense is black)."""
    colors: dict[str, str] = {}
    for r in rows:
        if r.method != "dense" and r.series not in colors:
            colors[r.series] = _COLORS[len(colors) % len(_COLORS)]
    return colors


def _by_series(rows: Sequence[Row]) -> dict[str, list[Row]]:
    groups: dict[str, list[Row]] = {}
    for r in rows:
        if r.method != "dense":
            groups.setdefault(r.series, []).append(r)
    return {k: sorted(v, key=lambda r: r.sparsity) for k, v in groups.items()}


def noise_band(rows: Sequence[Row], name: str) -> tuple[float, float] | None:
    """The dense point's median +/- its inter-quartile range for a timed metric (tok/s, latency): a point inside
    this band differs from dense by less than the run-to-run spread (`measurement/timing.py`), i.e. by noise.
    None when the metric is not timed, dense was not measured, or no spread was recorded (one repeat: IQR 0)."""
    if name not in TIMED:
        return None
    dense = next((r for r in rows if r.method == "dense" and value(r, name) is not None), None)
    if dense is None:
        return None
    stats = (dense.details.get("latency") or {}).get(name)
    if name == "prefill_ms" and isinstance(stats, dict) and "iqr" not in stats and len(stats) == 1:
        stats = next(iter(stats.values()))  # {prompt length: stats}, one prompt length per sweep
    iqr = stats.get("iqr") if isinstance(stats, dict) else None
    if not iqr or iqr <= 0:
        return None
    v = value(dense, name)
    assert v is not None
    return max(v - float(iqr), 0.0), v + float(iqr)


def _plot_vs_sparsity(ax: Any, rows: Sequence[Row], name: str, colors: dict[str, str]) -> bool:
    """One line per series (N:M patterns as stars), dense as a dashed line. False when nothing was measured."""
    m = metric(name)
    drawn = False
    for series, group in _by_series(rows).items():
        pts = [(r.sparsity, value(r, name)) for r in group if value(r, name) is not None]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        nm = all(":" in r.pattern for r in group)
        style = {"marker": "*", "markersize": 13, "linestyle": "none"} if nm else {"marker": "o", "linestyle": "-"}
        ax.plot(xs, ys, color=colors[series], label=series, **style)
        drawn = True
    dense = [r for r in rows if r.method == "dense" and value(r, name) is not None]
    if dense:
        v = value(dense[0], name)
        ax.axhline(v, color=DENSE_COLOR, linestyle="--", linewidth=1, label=f"dense ({m.format(v)})")
        ax.plot([0.0], [v], marker="s", color=DENSE_COLOR)
        drawn = True
    band = noise_band(rows, name)
    if band is not None:
        ax.axhspan(*band, color=DENSE_COLOR, alpha=0.12, linewidth=0, label=NOISE_LABEL, zorder=0)
    if m.log_scale:
        _log_y(ax)
    structured = any(r.method == "structured" for r in rows)  # say what the x axis means for structured points
    ax.set_xlabel("sparsity (structured: share of block parameters removed)" if structured else "sparsity")
    ax.set_ylabel(f"{m.label}{f' [{m.unit}]' if m.unit else ''}")
    ax.grid(True, which="both", alpha=0.3)
    return drawn


def _log_y(ax: Any) -> None:
    """Log scale with plain numbers (12, 15, 20) instead of 1.2 x 10^1 on narrow ranges."""
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#777777")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_quality(rows: Sequence[Row]) -> bytes:
    """Perplexity vs sparsity per method (log scale), plus zero-shot accuracy when it was measured."""
    require_matplotlib()
    colors = series_colors(rows)
    has_acc = any(value(r, "zeroshot_mean") is not None for r in rows)
    fig, axes = _figure(11 if has_acc else 7.5, 4.8, 2 if has_acc else 1)
    _plot_vs_sparsity(axes[0], rows, "perplexity", colors)
    axes[0].set_title("Perplexity vs sparsity (log scale)")
    axes[0].legend(fontsize=8)
    if has_acc:
        _plot_vs_sparsity(axes[1], rows, "zeroshot_mean", colors)
        axes[1].set_title("Zero-shot accuracy vs sparsity")
    return _png(fig)


COST_PANELS = (
    (("compact_size_mb", "size_mb"), "Checkpoint size"),
    (("decode_tokens_per_s",), "Decode speed"),
    (("energy_j_per_token",), "Energy per generated token"),
)


def energy_is_estimate(rows: Sequence[Row]) -> bool | None:
    """True if any energy figure is an estimate, False if all are metered, None if none was taken."""
    flags = [(r.details.get("energy") or {}).get("is_estimate") for r in rows]
    flags = [f for f in flags if f is not None]
    return None if not flags else any(flags)


def plot_costs(rows: Sequence[Row]) -> bytes:
    """Size, decode tokens/s and energy per token vs sparsity; a panel says so when its metric is absent."""
    require_matplotlib()
    colors = series_colors(rows)
    fig, axes = _figure(15, 4.6, len(COST_PANELS))
    for ax, (names, title) in zip(axes, COST_PANELS, strict=True):
        name = next((n for n in names if any(value(r, n) is not None for r in rows)), None)
        if name is None:
            _empty(ax, f"{title}: not measured\n(measurement disabled or unavailable)")
            ax.set_title(title)
            continue
        _plot_vs_sparsity(ax, rows, name, colors)
        if not metric(name).log_scale:
            # From zero: a 12-15 tok/s axis makes run-to-run noise look like a 1.3x speedup (bench/RESULTS.md
            # measures a +-10-30% spread of decode speed on a shared CPU).
            ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.05)
        if name == "energy_j_per_token" and energy_is_estimate(rows):
            title += " (ESTIMATE)"
        if name == "compact_size_mb":
            title = "Compact checkpoint size"
        ax.set_title(title)
    full = next((ax for ax in axes if ax.get_legend_handles_labels()[0]), None)
    if full is not None:
        full.legend(fontsize=7)
    for ax in axes:  # a panel with a noise band names it, whether or not it carries the full legend
        bands = [h for h, lbl in zip(*ax.get_legend_handles_labels(), strict=True) if lbl == NOISE_LABEL]
        if bands and ax is not full:
            ax.legend(handles=bands, fontsize=7, loc="lower right")
    return _png(fig)


def plot_pareto(rows: Sequence[Row], frontier: Sequence[Row], selection: Selection | None, quality: str) -> bytes:
    """Quality vs the selection's cost: every point, the frontier as a line, the recommended point ringed."""
    require_matplotlib()
    cost = selection.cost if selection else "nonzero_params"
    cm, qm = metric(cost), metric(quality)
    colors = series_colors(rows)
    fig, axes = _figure(8, 5.2)
    ax = axes[0]
    for r in rows:
        x, y = value(r, cost), value(r, quality)
        if x is None or y is None:
            continue
        color = DENSE_COLOR if r.method == "dense" else colors[r.series]
        ax.plot([x], [y], marker="s" if r.method == "dense" else "o", color=color, linestyle="none", alpha=0.85)
        ax.annotate(r.label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color="#444444")
    front = sorted(((value(r, cost), value(r, quality)) for r in frontier), key=lambda p: (p[0], p[1]))
    if front:
        xs, ys = zip(*front, strict=True)
        ax.plot(xs, ys, color="#d62728", linewidth=1.5, drawstyle="steps-post", label="Pareto frontier", zorder=1)
    if selection is not None:
        x, y = value(selection.row, cost), value(selection.row, quality)
        ax.plot([x], [y], marker="o", markersize=18, markerfacecolor="none", markeredgecolor="#2ca02c",
                markeredgewidth=2.5, linestyle="none", label=f"recommended: {selection.row.label}")  # fmt: skip
    if qm.log_scale:
        _log_y(ax)
    ax.set_xlabel(f"{cm.label}{f' [{cm.unit}]' if cm.unit else ''} ({'higher' if cm.higher_is_better else 'lower'} "
                  "is better)")  # fmt: skip
    ax.set_ylabel(f"{qm.label} ({'higher' if qm.higher_is_better else 'lower'} is better)")
    ax.set_title(f"Pareto frontier: {qm.label} vs {cm.label}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)
