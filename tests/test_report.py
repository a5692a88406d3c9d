"""Pareto frontier, budget selection, markdown and HTML report on hand-made points whose answers are known."""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from prunelab.errors import PrunelabError
from prunelab.report.build import build_report
from prunelab.report.html import PLOT_IDS
from prunelab.report.metrics import METRICS, metric
from prunelab.report.pareto import Budget, dominates, pareto_front, select
from prunelab.report.summary import BREAK_EVEN, columns, markdown_summary


@dataclass
class P:
    """A hand-made point (the fields the report reads from a stored record)."""

    label: str
    metrics: dict[str, float | None]
    method: str = "magnitude"
    pattern: str = "unstructured"
    sparsity: float = 0.5
    series: str = ""
    index: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    host: str = "here"
    point_id: str = ""

    def __post_init__(self) -> None:
        self.series = self.series or self.method
        self.point_id = self.point_id or self.label


def labels(rows: list[P]) -> list[str]:
    return [r.label for r in rows]


def test_every_metric_declares_direction_and_kind() -> None:
    assert metric("perplexity").higher_is_better is False and metric("perplexity").role == "quality"
    assert metric("zeroshot_mean").higher_is_better is True
    assert metric("decode_tokens_per_s").higher_is_better is True and metric("decode_tokens_per_s").role == "cost"
    assert metric("compact_size_mb").higher_is_better is False
    assert metric("perplexity@wikitext2").higher_is_better is False  # per-source family
    assert all(m.role in ("quality", "cost", "info") for m in METRICS.values())


def test_pareto_excludes_dominated_keeps_ties_and_skips_missing() -> None:
    rows = [
        P("dense", {"perplexity": 10.0, "compact_size_mb": 100.0}, method="dense"),
        P("b", {"perplexity": 10.5, "compact_size_mb": 60.0}),
        P("b-twin", {"perplexity": 10.5, "compact_size_mb": 60.0}),  # identical: neither dominates the other
        P("same-cost-worse", {"perplexity": 11.0, "compact_size_mb": 60.0}),  # dominated by b (equal cost)
        P("same-ppl-costlier", {"perplexity": 10.5, "compact_size_mb": 70.0}),  # dominated by b (equal quality)
        P("worse-both", {"perplexity": 12.0, "compact_size_mb": 80.0}),
        P("tiny", {"perplexity": 20.0, "compact_size_mb": 30.0}),
        P("unmeasured", {"perplexity": 9.0, "compact_size_mb": None}),  # cannot be compared: left out
    ]
    assert labels(pareto_front(rows, ["perplexity", "compact_size_mb"])) == ["dense", "b", "b-twin", "tiny"]
    assert not dominates(rows[1], rows[2], [metric("perplexity"), metric("compact_size_mb")])


def test_pareto_respects_higher_is_better() -> None:
    rows = [
        P("dense", {"perplexity": 10.0, "decode_tokens_per_s": 100.0}, method="dense"),
        P("fast", {"perplexity": 11.0, "decode_tokens_per_s": 150.0}),
        P("slower-and-worse", {"perplexity": 12.0, "decode_tokens_per_s": 140.0}),
        P("slow", {"perplexity": 10.0, "decode_tokens_per_s": 90.0}),  # same quality as dense, slower
    ]
    # Were speed treated as lower-is-better, "slow" would be on the frontier and "fast" would not.
    assert labels(pareto_front(rows, ["perplexity", "decode_tokens_per_s"])) == ["dense", "fast"]


BUDGET_ROWS = [
    P("dense", {"perplexity": 10.0, "compact_size_mb": 100.0, "decode_tokens_per_s": 50.0}, method="dense", index=0),
    P("m30", {"perplexity": 10.5, "compact_size_mb": 80.0, "decode_tokens_per_s": 50.0}, index=1),
    P("m50", {"perplexity": 11.0, "compact_size_mb": 60.0, "decode_tokens_per_s": 50.0}, index=2),  # exactly +10%
    P("m70", {"perplexity": 14.0, "compact_size_mb": 40.0, "decode_tokens_per_s": 50.0}, index=3),
    P("s", {"perplexity": 10.2, "compact_size_mb": 60.0, "decode_tokens_per_s": 75.0}, method="structured", index=4),
]


def test_budget_picks_the_cheapest_point_inside_and_explains_it() -> None:
    sel = select(BUDGET_ROWS, Budget(max_ppl_increase=0.10))
    # m50 (exactly +10%) and s tie on size 60: the better perplexity wins.
    assert sel.row.label == "s" and sel.cost == "compact_size_mb"
    assert labels(sel.candidates) == ["dense", "m30", "m50", "s"]
    assert sel.sentence == (
        "Recommended: s — it has the lowest compact checkpoint size (needs a sparse-aware runtime) (60.0 MB, 0.60x "
        "dense) among the 4 of 5 points "
        "with perplexity within +10% of dense (10.000), at perplexity 10.200 (+2.0%), and it decodes at 1.50x the "
        "dense speed."
    )
    unstructured = select(BUDGET_ROWS, Budget(max_ppl_increase=0.5))
    assert unstructured.row.label == "m70"
    assert unstructured.sentence.endswith("so expect the dense speed (measured 1.00x).")
    assert select(BUDGET_ROWS, Budget(max_ppl_increase=0.10), cost="decode_tokens_per_s").row.label == "s"
    assert select(BUDGET_ROWS, Budget()).budget.max_ppl_increase == 0.10  # the default budget


def test_budget_too_tight_recommends_dense() -> None:
    sel = select(BUDGET_ROWS, Budget(max_ppl_increase=0.01))
    assert sel.row.label == "dense"
    assert "no pruned point is inside the budget" in sel.sentence and "s, costs +2.0% perplexity" in sel.sentence
    # Inside the budget, but no cheaper point: dense again, with a different reason.
    flat = [BUDGET_ROWS[0], P("same", {"perplexity": 10.1, "compact_size_mb": 100.0}, index=1)]
    assert "none of the 1 pruned points" in select(flat, Budget(0.1)).sentence


def test_min_accuracy_budget() -> None:
    rows = [
        P("dense", {"perplexity": 10.0, "zeroshot_mean": 0.50, "compact_size_mb": 100.0}, method="dense"),
        P("a", {"perplexity": 11.0, "zeroshot_mean": 0.47, "compact_size_mb": 70.0}, index=1),
        P("b", {"perplexity": 13.0, "zeroshot_mean": 0.44, "compact_size_mb": 50.0}, index=2),
        P("c", {"perplexity": 12.0, "zeroshot_mean": None, "compact_size_mb": 40.0}, index=3),  # not measured
    ]
    assert select(rows, Budget(min_accuracy=0.45)).row.label == "a"
    assert select(rows, Budget(min_accuracy=0.40)).row.label == "b"
    with pytest.raises(PrunelabError, match="needs zero-shot accuracy"):
        select(BUDGET_ROWS, Budget(min_accuracy=0.4))
    with pytest.raises(PrunelabError, match="not a cost metric"):
        select(BUDGET_ROWS, Budget(0.1), cost="perplexity")
    with pytest.raises(PrunelabError, match="dense baseline"):
        select(BUDGET_ROWS[1:], Budget(0.1))


def _report_rows() -> list[P]:
    energy = {"energy_source": "estimate-cpu-model", "is_estimate": True}
    out = []
    for i, r in enumerate(BUDGET_ROWS):
        m = {**r.metrics, "energy_j_per_token": 0.5 - 0.05 * i, "size_mb": 400.0, "nonzero_params": 1e6 * (5 - i)}
        out.append(P(r.label, m, method=r.method, index=i, sparsity=0.1 * i, details={"energy": energy, "run": 1}))
    return out


def test_markdown_summary_marks_frontier_and_recommendation() -> None:
    rows = _report_rows()
    sel = select(rows, Budget(0.10))
    md = markdown_summary(rows, pareto_front(rows, ["perplexity", sel.cost]), sel, "Sweep")
    lines = md.splitlines()
    assert lines[0] == "## Sweep: 5 points"
    row = {line.split(" | ")[0]: line for line in lines if line.startswith("| ")}
    assert row["| s"].startswith("| s | unstructured | 0.4 | 10.200 | +2.0% | 60.0 |")
    assert row["| s"].endswith("| **recommended** |")
    assert row["| dense"].endswith("| yes |") and row["| m70"].endswith("| yes |")  # the frontier's two ends
    assert row["| m30"].endswith("|  |")  # dominated by s (worse perplexity, larger)
    assert "(estimate)" in md and md.strip().endswith("not from a meter.")


def test_html_report_embeds_every_plot_and_the_table() -> None:
    rows = _report_rows()
    report = build_report(rows, {"environment": {"cpu": "Test CPU", "torch": "2.13.0"}}, Budget(0.10), title="T")
    page = report.html
    assert page is not None and page.startswith("<!doctype html>")
    for ident in PLOT_IDS:
        m = re.search(rf'<figure id="{ident}"><img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
        assert m, ident
        assert base64.b64decode(m.group(1))[:8] == b"\x89PNG\r\n\x1a\n"
    table = re.search(r'<table id="points" class="sortable">.*?</table>', page, re.S)
    assert table and table.group(0).count("<tr") == 1 + len(rows)
    assert '<tr class="front rec">' in table.group(0)  # the recommended point, on the frontier
    assert page.count('<span class="est">estimate</span>') == len(rows)  # every energy cell is labelled
    assert "Dense baseline" in page and "Test CPU" in page and report.selection.sentence in page
    assert "http://" not in page and "https://" not in page  # self-contained: nothing to fetch
    assert "<script>" in page and "sortable" in page


def test_report_without_matplotlib_gives_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import prunelab.report.plots as plots

    monkeypatch.setattr(plots.importlib.util, "find_spec", lambda name: None)
    report = build_report(_report_rows(), {}, Budget(0.10))
    assert report.html is None
    assert report.html_skipped == "plots and the HTML report need matplotlib: " + plots.INSTALL_HINT
    assert "Recommended: s" in report.markdown  # the summary does not need matplotlib


def test_cost_axes_start_at_zero_and_captions_fit_the_sweep(monkeypatch) -> None:
    pytest.importorskip("matplotlib")
    from prunelab.report import html, plots

    rows = [
        P("dense", {"perplexity": 10.0, "decode_tokens_per_s": 11.8, "compact_size_mb": 100.0}, method="dense",
          sparsity=0.0),
        P("w50", {"perplexity": 12.0, "decode_tokens_per_s": 15.1, "compact_size_mb": 60.0}, method="wanda"),
    ]  # fmt: skip
    figures = []
    monkeypatch.setattr(plots, "_png", lambda fig: figures.append(fig) or b"")
    plots.plot_costs(rows)
    size_ax, speed_ax = figures[0].axes[:2]
    assert speed_ax.get_ylim()[0] == 0 and speed_ax.get_ylim()[1] >= 15.1  # not an 11.8-15.1 axis
    assert size_ax.get_ylim()[0] == 0
    assert speed_ax.get_xlabel() == "sparsity"  # no structured points: no structured wording
    plots.plot_quality(rows)
    assert figures[-1].axes[0].get_yscale() == "log"  # perplexity keeps its log axis

    captions = html.plot_captions(rows)
    assert "N:M" not in captions["plot-quality"] and "structured" not in captions["plot-quality"]
    assert "start at zero" in captions["plot-costs"]
    both = [*rows, P("s", {"perplexity": 11.0}, method="structured"), P("w24", {"perplexity": 13.0}, pattern="2:4")]
    captions = html.plot_captions(both)
    assert "stars are N:M" in captions["plot-quality"] and "structured points" in captions["plot-quality"]
    page = html.render_html(rows, rows, None, {}, {"title": "t"})
    assert '<div class="scroll"><table id="points"' in page and ".scroll{overflow-x:auto" in page


def _band_artists(ax: Any) -> list[Any]:
    from prunelab.report.plots import NOISE_LABEL

    return [a for a in [*ax.patches, *ax.collections] if a.get_label() == NOISE_LABEL]


def _y_extent(artist: Any) -> tuple[float, float]:
    from matplotlib.patches import Rectangle

    if isinstance(artist, Rectangle):  # matplotlib >= 3.9
        return artist.get_y(), artist.get_y() + artist.get_height()
    ys = [y for _, y in artist.get_xy()]  # older: a Polygon
    return min(ys), max(ys)


def test_speed_panel_shades_the_dense_noise_band(monkeypatch) -> None:
    pytest.importorskip("matplotlib")
    from prunelab.report import plots

    spread = {"median": 11.8, "iqr": 2.5, "q1": 10.0, "q3": 12.5, "min": 9.0, "max": 14.0, "n": 5}
    rows = [
        P("dense", {"perplexity": 10.0, "decode_tokens_per_s": 11.8, "prefill_ms": 40.0}, method="dense",
          sparsity=0.0, details={"latency": {"decode_tokens_per_s": spread,
                                             "prefill_ms": {"128": {**spread, "median": 40.0, "iqr": 50.0}}}}),
        P("w50", {"perplexity": 12.0, "decode_tokens_per_s": 13.0, "compact_size_mb": 60.0}, method="wanda"),
    ]  # fmt: skip
    # median +/- IQR (not the quartiles, not +/- IQR/2), clipped at zero for a latency
    assert plots.noise_band(rows, "decode_tokens_per_s") == pytest.approx((9.3, 14.3))
    assert plots.noise_band(rows, "prefill_ms") == (0.0, 90.0)
    assert plots.noise_band(rows, "perplexity") is None  # not a timing
    figures = []
    monkeypatch.setattr(plots, "_png", lambda fig: figures.append(fig) or b"")
    plots.plot_costs(rows)
    size_ax, speed_ax, energy_ax = figures[0].axes[:3]
    [band] = _band_artists(speed_ax)
    assert _y_extent(band) == pytest.approx((9.3, 14.3))
    assert not _band_artists(size_ax) and not _band_artists(energy_ax)
    assert "dense +/- IQR (noise)" in [t.get_text() for t in speed_ax.get_legend().get_texts()]  # users see it

    # one repeat (IQR 0) or no recorded spread: no band, never a made-up one
    assert [t.get_text() for t in speed_ax.get_legend().get_texts()] == ["dense +/- IQR (noise)"]  # its own legend
    assert size_ax.get_legend() is not None  # the full legend stays on the first panel
    rows[0].details["latency"]["decode_tokens_per_s"] = {**spread, "iqr": 0.0}
    assert plots.noise_band(rows, "decode_tokens_per_s") is None
    rows[0].details = {}
    plots.plot_costs(rows)
    assert not _band_artists(figures[-1].axes[1])


def _trained_rows() -> list[P]:
    est = {"energy": {"is_estimate": False, "energy_source": "rapl"}}
    spans = [{"energy": {"is_estimate": False}}]
    return [
        P("dense", {"perplexity": 10.0, "energy_j_per_token": 2.0, "compact_size_mb": 100.0}, method="dense",
          details=est),
        # 1 kWh of training, 0.5 J/token saved: 7.2 million tokens
        P("recovered", {"perplexity": 11.0, "energy_j_per_token": 1.5, "training_energy_j": 3.6e6,
                        "training_g_co2eq": 475.0, "compact_size_mb": 60.0},
          method="structured", details={**est, "training": spans}),
        P("dearer", {"perplexity": 12.0, "energy_j_per_token": 2.1, "training_energy_j": 10.0, "compact_size_mb": 60.0},
          method="structured", details={**est, "training": spans}),
        P("untrained", {"perplexity": 13.0, "energy_j_per_token": 1.0, "compact_size_mb": 50.0}, details=est),
    ]  # fmt: skip


def test_break_even_column_beside_the_training_energy() -> None:
    rows = _trained_rows()
    cols = columns(rows)
    keys = [c.key for c in cols]
    assert keys.index("energy_j_per_token") < keys.index("training_energy_j") < keys.index(BREAK_EVEN)
    assert keys.index(BREAK_EVEN) == keys.index("training_g_co2eq") + 1
    col = cols[keys.index(BREAK_EVEN)]
    shown = {r.label: col.show(r) for r in rows}
    assert shown == {"dense": "-", "recovered": "7.2e+06", "dearer": "never", "untrained": "-"}
    assert col.get(rows[1]) == pytest.approx(7.2e6) and col.get(rows[2]) == math.inf and col.get(rows[3]) is None
    assert metric(BREAK_EVEN).higher_is_better is False and "training repaid after" in col.header
    md = markdown_summary(rows, [], None)
    assert "| recovered |" in md and "7.2e+06" in md and "never" in md
    report = build_report(rows, {}, Budget(0.5), title="T")
    if report.html is not None:
        assert "training repaid after" in report.html and 'data-v="Infinity">never' in report.html
    # an estimated training figure is labelled like every other energy figure
    rows[1].details["training"] = [{"energy": {"is_estimate": True}}]
    cols = columns(rows)
    assert cols[[c.key for c in cols].index("training_energy_j")].show(rows[1]).endswith("(estimate)")


def test_no_break_even_column_without_both_energies() -> None:
    no_training = [P("dense", {"perplexity": 10.0, "energy_j_per_token": 2.0}, method="dense"),
                   P("m", {"perplexity": 11.0, "energy_j_per_token": 1.9})]  # fmt: skip
    assert BREAK_EVEN not in [c.key for c in columns(no_training)]
    assert "training_energy_j" not in [c.key for c in columns(no_training)]
    no_inference = [P("dense", {"perplexity": 10.0}, method="dense"),
                    P("s", {"perplexity": 11.0, "training_energy_j": 5.0})]  # fmt: skip
    keys = [c.key for c in columns(no_inference)]
    assert "training_energy_j" in keys and BREAK_EVEN not in keys  # the training figure alone, no invented ratio
    assert "training repaid" not in markdown_summary(no_inference, [], None)
