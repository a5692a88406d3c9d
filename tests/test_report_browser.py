"""The HTML report in a real headless browser (Debian's chromium): every plot decodes and is visibly drawn, the
table sorts. Skipped cleanly where chromium is not installed (CI installs it: `apt-get install -y chromium`).

Two chromium runs on the same page at the same window size: `--dump-dom` with a probe script that records, after
the load event, how many <img> decoded, where each plot lies and the table order after a header click; then
`--screenshot`, whose pixels inside those boxes must not be blank. A copy of the page whose plots are blank images
of the same size is the negative control: the pixel check must fail on it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from prunelab.report.build import build_report
from prunelab.report.pareto import Budget
from tests.test_report import _report_rows

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(BROWSER is None, reason="chromium not installed (apt-get install -y chromium)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--hide-scrollbars", "--window-size=1300,3600"]  # fmt: skip
PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.from(document.querySelectorAll('figure img'));
  var boxes = imgs.map(function (i) { var r = i.getBoundingClientRect();
    return [Math.round(r.left), Math.round(r.top), Math.round(r.width), Math.round(r.height)]; });
  var th = Array.from(document.querySelectorAll('#points th')).find(function (h) {
    return h.textContent === 'perplexity'; });
  th.click();
  var order = Array.from(document.querySelectorAll('#points tbody tr')).map(function (r) {
    return r.cells[0].textContent; });
  var out = document.createElement('pre'); out.id = 'probe';
  out.textContent = JSON.stringify({decoded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; })
    .length, boxes: boxes, order: order});
  document.body.appendChild(out);
});
</script></body>"""


def _chromium(page: Path, tmp: Path, *args: str) -> str:
    cmd = [BROWSER, *FLAGS, f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=5000", *args, page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _render(html: str, tmp: Path, name: str) -> tuple[dict, list[float]]:
    """(probe result, fraction of non-white pixels inside each plot box of the screenshot)."""
    from matplotlib.image import imread

    page = tmp / f"{name}.html"
    page.write_text(html.replace("</body>", PROBE, 1))
    dom = _chromium(page, tmp, "--dump-dom")
    probe = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"'))
    shot = tmp / f"{name}.png"
    _chromium(page, tmp, f"--screenshot={shot}")
    pixels = imread(shot)[..., :3]  # floats in [0, 1], (height, width, 3)
    inked = []
    for left, top, width, height in probe["boxes"]:
        region = pixels[top : top + height, left : left + width]
        inked.append(float((region.min(axis=-1) < 0.9).mean()) if region.size else 0.0)
    return probe, inked


def test_report_renders_plots_and_sorts_in_chromium(tmp_path: Path) -> None:
    rows = _report_rows()
    html = build_report(rows, {"environment": {"cpu": "Test CPU"}}, Budget(0.10), title="Browser check").html
    assert html is not None

    probe, inked = _render(html, tmp_path, "report")
    assert probe["decoded"] == 3 and len(probe["boxes"]) == 3
    assert all(w > 300 and h > 200 for _, _, w, h in probe["boxes"])
    assert all(f > 0.01 for f in inked), inked  # axes, lines, labels: a drawn plot is far from blank
    by_ppl = sorted(rows, key=lambda r: r.metrics["perplexity"])
    assert probe["order"] == [r.label for r in by_ppl]  # the inline sort ran on the header click

    # Negative control: plots replaced by blank images of the same size decode but fail the pixel check.
    blank = re.sub(r'src="data:image/png;base64,[^"]+"', f'src="data:image/png;base64,{_blank_png()}"', html)
    probe, inked = _render(blank, tmp_path, "blank")
    assert probe["decoded"] == 3 and all(f < 0.01 for f in inked), inked


def _blank_png() -> str:
    import base64
    import io

    from matplotlib.figure import Figure

    buf = io.BytesIO()
    Figure(figsize=(8, 5), dpi=100).savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")
