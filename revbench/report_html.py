"""`report.html`: the report's blocks as one self-contained page beside report.md.

Figures are inlined as SVG and the style and the table sorting (a few lines of script: click
a column's header to sort by it, again to reverse) are in the page itself, so the file opens
anywhere with no network and nothing beside it. Text is escaped before the small inline
Markdown subset of `revbench.markdown` is turned into tags.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from .markdown import Block, Bullets, FigureBlock, Heading, Para, Table

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1b1b;
       max-width: 1200px; margin: 2em auto; padding: 0 1.5em; }
h1, h2, h3, h4 { line-height: 1.2; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, monospace; background: #f3f3f3;
       padding: 0 .2em; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; }
th, td { border: 1px solid #d8d8d8; padding: .25em .5em; vertical-align: top; }
/* Headers and long cells (notes, commands) wrap, so a table fits the window and every
   column shows; the box scrolls only where words alone are wider than it. */
th { background: #f5f5f5; cursor: pointer; user-select: none; }
td { max-width: 26em; overflow-wrap: break-word; }
td.num { white-space: nowrap; }
@media (max-width: 900px) { body { margin: 1em auto; padding: 0 .6em; }
  table { font-size: 12px; } th, td { padding: .2em .3em; }
  td { max-width: 16em; overflow-wrap: anywhere; } td.num { overflow-wrap: normal; } }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafafa; }
.caption, .footnote, .skipped, .files { font-size: 13px; color: #444; }
figure { margin: 1em 0 2em; }
figure svg { max-width: 100%; height: auto; display: block; }
"""

# Click a header to sort its table by that column (numbers as numbers), again to reverse.
SCRIPT = """
(function () {
  function key(cell) {
    var text = cell.textContent.trim();
    var m = text.replace(/,/g, "").match(/^[~<>]?(-?\\d+(\\.\\d+)?(e[-+]?\\d+)?)/i);
    return m ? [0, parseFloat(m[1]), text] : [1, 0, text.toLowerCase()];
  }
  function compare(a, b) {
    if (a[0] !== b[0]) return a[0] - b[0];
    if (a[0] === 0 && a[1] !== b[1]) return a[1] - b[1];
    return a[2] < b[2] ? -1 : a[2] > b[2] ? 1 : 0;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.querySelectorAll("thead th");
    heads.forEach(function (th, col) {
      th.addEventListener("click", function () {
        var up = th.getAttribute("aria-sort") !== "ascending";
        heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", up ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var c = compare(key(a.cells[col]), key(b.cells[col]));
          return up ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
"""

_NUMBER = re.compile(r"^[~<>]?-?\d[\d,]*(\.\d+)?(e[-+]?\d+)?[x%M+]?$", re.IGNORECASE)


def inline(text: str) -> str:
    """Escaped text with `code`, **strong**, *emphasis* and [text](link) as tags."""
    parts = str(text).split("`")
    out = []
    for i, part in enumerate(parts):
        if i % 2 and i < len(parts) - 1:  # between two backticks
            out.append(f"<code>{html.escape(part)}</code>")
            continue
        part = html.escape(part if i % 2 == 0 else "`" + part, quote=False)
        part = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", part)
        part = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", part)
        part = re.sub(
            r"\[([^\]]+)\]\(([^)\s]+)\)",
            lambda m: f'<a href="{html.escape(m.group(2))}">{m.group(1)}</a>',
            part,
        )
        out.append(part)
    return "".join(out)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _svg_inline(svg: str) -> str:
    """matplotlib's SVG document as an element to inline: no XML prolog or doctype."""
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else ""


def _table(t: Table) -> list[str]:
    right = set(t.right)
    lines = ['<div class="scroll"><table class="sortable">', "<thead><tr>"]
    lines += [f"<th>{inline(h)}</th>" for h in t.headers]
    lines += ["</tr></thead>", "<tbody>"]
    for row in t.rows:
        cells = []
        for h, c in zip(t.headers, row):
            numeric = h in right or bool(_NUMBER.match(str(c)))
            cls = ' class="num"' if numeric else ""
            cells.append(f"<td{cls}>{inline(c)}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines += ["</tbody></table></div>"]
    if t.caption:
        lines.append(f'<p class="caption">{inline(t.caption)}</p>')
    lines += [f'<p class="footnote">{inline(n)}</p>' for n in t.footnotes]
    return lines


def _figure(item) -> list[str]:
    title = inline(f"{item.title} ({item.facet})")
    if item.skipped:
        return [f"<h4>{title}</h4>", f'<p class="skipped">Skipped: {inline(item.skipped)}.</p>']
    lines = [f"<h4>{title}</h4>", f'<figure id="fig-{_slug(item.suite + "-" + item.name)}">']
    lines.append(_svg_inline(item.svg))
    files = ", ".join(
        f'<a href="{html.escape(f)}">{html.escape(f.rsplit(".", 1)[1])}</a>' for f in item.files
    )
    caption = f"{title}" + (f' <span class="files">(files: {files})</span>' if files else "")
    lines += [f"<figcaption>{caption}</figcaption>", "</figure>"]
    return lines


def to_html(blocks: list[Block], title: str = "revbench report") -> str:
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f'<h{b.level} id="{_slug(b.text)}">{inline(b.text)}</h{b.level}>')
        elif isinstance(b, Para):
            body.append(f"<p>{inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            body += ["<ul>", *(f"<li>{inline(i)}</li>" for i in b.items), "</ul>"]
        elif isinstance(b, Table):
            body += _table(b)
        elif isinstance(b, FigureBlock):
            body += _figure(b.item)
        else:  # pragma: no cover - a new block type must be rendered here
            raise TypeError(f"unknown report block {type(b).__name__}")
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{html.escape(title)}</title>",
            f"<style>{STYLE}</style>",
            "</head>",
            "<body>",
            *body,
            f"<script>{SCRIPT}</script>",
            "</body>",
            "</html>",
            "",
        ]
    )


def write_html(blocks: list[Block], out: Path) -> Path:
    """Write out/report.html from the report's blocks (figures inline as SVG)."""
    path = out / "report.html"
    path.write_text(to_html(blocks), encoding="utf-8")
    return path
