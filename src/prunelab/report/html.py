"""One self-contained HTML page for a sweep: plots embedded as base64 PNG, a sortable table, no external files.

Self-contained so it can be mailed, attached to an issue or committed: no CDN, no script or stylesheet to fetch.
The table sorts by clicking a header (a few lines of inline JavaScript; numeric cells sort by their raw value).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from prunelab.report.pareto import Row, Selection
from prunelab.report.summary import columns, is_estimate

PLOT_IDS = ("plot-quality", "plot-costs", "plot-pareto")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1300px;
color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
.rec{background:#eef7ee;border-left:4px solid #2ca02c;padding:.6em 1em;font-size:1.05em}
.note{color:#555;font-size:.92em} .est{background:#fff3cd;border-radius:3px;padding:0 .3em;font-size:.85em}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.88em} th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right}
th{background:#f4f4f4;cursor:pointer;user-select:none;position:sticky;top:0}
td:first-child,th:first-child{text-align:left}
tr.front td{background:#fbfbf0} tr.rec td{background:#e3f4e3;font-weight:600} tr.dense td{font-style:italic}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em} dt{font-weight:600}
"""

# Click a header: sort by data-v (numbers when every cell parses, text otherwise); click again to reverse.
_JS = """
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){
    var body=t.tBodies[0],rows=Array.from(body.rows),dir=th.dataset.dir==='asc'?-1:1;th.dataset.dir=dir>0?'asc':'desc';
    var v=function(r){return r.cells[i].dataset.v;};
    var num=rows.every(function(r){return v(r)===''||!isNaN(parseFloat(v(r)));});
    rows.sort(function(a,b){var x=v(a),y=v(b);if(x===''&&y==='')return 0;if(x==='')return 1;if(y==='')return -1;
      return num?dir*(parseFloat(x)-parseFloat(y)):dir*x.localeCompare(y);});
    rows.forEach(function(r){body.appendChild(r);});});});});
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _img(png: bytes, alt: str, ident: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure id="{ident}"><img src="data:image/png;base64,{data}" alt="{_e(alt)}">'
        f"<figcaption class='note'>{_e(caption)}</figcaption></figure>"
    )


def _table(rows: Sequence[Row], frontier: Sequence[Row], selection: Selection | None) -> str:
    cols = columns(rows)
    on_front = {id(r) for r in frontier}
    head = "".join(f"<th>{_e(c.header)}</th>" for c in cols) + "<th>Pareto</th>"
    body = []
    for r in rows:
        classes = []
        if id(r) in on_front:
            classes.append("front")
        if selection is not None and r is selection.row:
            classes.append("rec")
        if r.method == "dense":
            classes.append("dense")
        cells = []
        for c in cols:
            raw = c.get(r)
            text = _e(c.show(r)).replace("(estimate)", '<span class="est">estimate</span>')
            raw = "Infinity" if raw == math.inf else raw  # "never" (break-even) sorts last, as JS reads it
            cells.append(f'<td data-v="{_e("" if raw is None else raw)}">{text}</td>')
        front = "recommended" if "rec" in classes else ("frontier" if id(r) in on_front else "")
        cells.append(f'<td data-v="{_e(front)}">{_e(front)}</td>')
        body.append(f'<tr class="{" ".join(classes)}">{"".join(cells)}</tr>')
    table = f'<table id="points" class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    return f'<div class="scroll">{table}</div>'  # a wide table scrolls inside the page instead of overflowing it


def _dl(items: dict[str, Any]) -> str:
    return (
        "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items.items() if v not in (None, "")) + "</dl>"
    )


def _energy_note(rows: Sequence[Row]) -> str:
    sources = sorted(
        {str((r.details.get("energy") or {}).get("energy_source")) for r in rows if r.details.get("energy")}
    )
    if not sources:
        return "<p class='note'>Energy was not measured in this sweep.</p>"
    estimated = any(is_estimate(r) for r in rows)
    text = f"Energy source: {', '.join(sources)}. "
    if estimated:
        text += (
            "Figures labelled 'estimate' are not read from a meter: they come from a power model (watts per logical "
            "CPU x CPU-seconds of the process, see prunelab.measurement.energy), so they follow CPU time, not the "
            "real power draw. Carbon figures inherit that label."
        )
    else:
        text += "All energy figures were read from hardware counters."
    return f"<p class='note'>{_e(text)}</p>"


def plot_captions(rows: Sequence[Row]) -> dict[str, str]:
    """Captions that describe this sweep's points only (no N:M stars or structured axis when there are none)."""
    nm = any(":" in r.pattern for r in rows)
    structured = any(r.method == "structured" for r in rows)
    quality = "Quality vs sparsity for each method (perplexity on a log scale)"
    quality += "; stars are N:M patterns." if nm else "."
    if structured:
        quality += " For structured points the sparsity is the share of decoder-block parameters removed."
    return {
        "plot-quality": quality,
        "plot-costs": "What pruning buys vs sparsity: checkpoint size, decode speed and energy per generated token. "
        "Linear axes start at zero, so a difference inside the run-to-run noise of a timing (often +-10-30% on a "
        "shared CPU) looks as small as it is; compare against the dense line before reading a speedup. Where the dense "
        "point's timing repeats were kept, the grey band is dense +/- its IQR: a point inside it differs by noise.",
        "plot-pareto": "Quality against cost for every point; the line is the Pareto frontier, the ring the "
        "recommended point.",
    }


def render_html(
    rows: Sequence[Row],
    frontier: Sequence[Row],
    selection: Selection | None,
    plots: dict[str, bytes],
    meta: dict[str, Any],
) -> str:
    """The whole page. `plots` maps PLOT_IDS to PNG bytes; `meta` holds title, environment and notes."""
    title = meta.get("title") or "prunelab sweep"
    dense = next((r for r in rows if r.method == "dense"), None)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p class='note'>{_e(meta.get('subtitle', ''))}</p>",
    ]
    if selection is not None:
        parts.append(f"<p class='rec' id='recommendation'>{_e(selection.sentence)}</p>")
    if dense is not None:
        dense_items = {c.header: c.show(dense) for c in columns([dense]) if c.key not in ("label", "pattern")}
        parts += ["<h2>Dense baseline</h2>", _dl(dense_items)]
    captions = plot_captions(rows)
    parts.append("<h2>Plots</h2>")
    for ident in PLOT_IDS:
        if ident in plots:
            parts.append(_img(plots[ident], captions[ident], ident, captions[ident]))
    parts += [
        "<h2>All points</h2>",
        "<p class='note'>Click a column header to sort.</p>",
        _table(rows, frontier, selection),
    ]
    parts += ["<h2>Energy</h2>", _energy_note(rows)]
    parts += ["<h2>Hardware and software</h2>", _dl(meta.get("environment") or {})]
    notes = meta.get("notes") or []
    if notes:
        parts += ["<h2>Notes</h2><ul>", *(f"<li>{_e(n)}</li>" for n in notes), "</ul>"]
    generated = datetime.now(UTC).isoformat(timespec="seconds")
    parts.append(f"<p class='note'>Generated by prunelab report at {generated}.</p>")
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(parts)
