"""The evaluation report's HTML is real Markdown rendering, with its figures inlined; no training needed."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import matplotlib.pyplot as plt

from xenium_assets.plots import png_bytes
from xenium_assets.training.report import Report


def _report() -> tuple[Report, bytes]:
    fig, ax = plt.subplots(figsize=(0.5, 0.5))
    ax.plot([0, 1], [0, 1])
    png = png_bytes(fig, dpi=20)
    rep = Report("Does DAPI <predict> class?")
    rep.add("Answer", "- Signal? **yes**: p = 0.001\n- More than morphology? **no**")
    rep.add("Metrics", "| model | macro-F1 |\n|---|---|\n| CNN (DAPI) | 0.512 |\n| majority | 0.100 |")
    rep.add("Figures", rep.image("confusion", png, "confusion matrix") + "\n\n![elsewhere](missing.png)")
    rep.add("Escaping", "a < b & c > d, and <script>alert(1)</script> stays text")
    return rep, png


def test_write_renders_markdown_to_html(tmp_path: Path) -> None:
    rep, png = _report()
    md_path, html_path = rep.write(tmp_path)
    assert md_path.read_text() == rep.markdown()
    assert (tmp_path / "confusion.png").read_bytes() == png
    page = html_path.read_text()

    assert page.startswith("<!doctype html>")
    assert "<meta charset='utf-8'>" in page
    assert "<title>Does DAPI &lt;predict&gt; class?</title>" in page
    assert page.count("<h1>") == 1
    assert "<h1>Does DAPI &lt;predict&gt; class?</h1>" in page
    assert page.count("<h2>") == 4

    assert "<strong>yes</strong>" in page and "<strong>no</strong>" in page
    assert "**" not in page
    assert re.search(r"<ul>\s*<li>Signal\?.*?</li>\s*<li>More than morphology\?.*?</li>\s*</ul>", page, re.S)

    table = re.search(r"<table>.*?</table>", page, re.S)
    assert table
    assert "<th>model</th>" in table.group(0) and "<th>macro-F1</th>" in table.group(0)
    assert "<td>CNN (DAPI)</td>" in table.group(0) and "<td>0.100</td>" in table.group(0)

    inlined = re.search(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="confusion matrix"', page)
    assert inlined and base64.b64decode(inlined.group(1)) == png
    assert '<img src="missing.png" alt="elsewhere"' in page

    assert "a &lt; b &amp; c &gt; d" in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
