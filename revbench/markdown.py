"""Markdown tables, written one way for the report and the gate, and the report's blocks.

The report is built as a list of blocks (headings, paragraphs, tables, figures) so that one
document renders both as Markdown (`to_markdown`) and as HTML (`revbench.report_html`).
Paragraph text uses a small inline Markdown subset both renderers read the same:
`code`, *emphasis*, **strong** and [text](link).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


def md_table(
    headers: Sequence[str], rows: Iterable[Sequence], right: Iterable[str] = ()
) -> list[str]:
    """A GitHub-flavoured Markdown table as lines; columns named in `right` align right."""
    right = set(right)
    align = ["--:" if h in right else "---" for h in headers]
    return [_row(headers), _row(align), *(_row(r) for r in rows)]


def _row(cells: Iterable) -> str:
    # A "|" inside a cell would end it early.
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


# --------------------------------------------------------------------------- blocks


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str  # inline Markdown subset


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    """A table; `caption` says what every row shares (see `compact`)."""

    headers: list[str]
    rows: list[list]
    right: tuple[str, ...] = ()
    caption: str = ""
    footnotes: list[str] = field(default_factory=list)


@dataclass
class FigureBlock:
    item: Any  # revbench.report.Rendered


Block = Heading | Para | Bullets | Table | FigureBlock


def compact(table: Table, keep: Iterable[str] = ()) -> Table:
    """`table` without the columns that hold the same value on every row: they go into the
    caption ("All rows: precision fp32, method estimated."), or, when empty ("" or "-"),
    away. A one-row table keeps its columns (every column is trivially constant), and so do
    the columns in `keep`."""
    if len(table.rows) < 2:
        return table
    keep = set(keep)
    constant = [
        i
        for i, h in enumerate(table.headers)
        if h not in keep and len({str(r[i]) for r in table.rows}) == 1
    ]
    if not constant:
        return table
    # An empty column goes without a word; a shared value is said once.
    shared = ", ".join(
        f"{table.headers[i]} {table.rows[0][i]}"
        for i in constant
        if str(table.rows[0][i]) not in ("", "-")
    )
    kept = [i for i in range(len(table.headers)) if i not in constant]
    caption = " ".join(filter(None, [f"All rows: {shared}." if shared else "", table.caption]))
    return Table(
        headers=[table.headers[i] for i in kept],
        rows=[[r[i] for i in kept] for r in table.rows],
        right=table.right,
        caption=caption,
        footnotes=table.footnotes,
    )


EMBEDDABLE = ("png", "svg")  # Markdown viewers show these inline; pdf is linked


def to_markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            lines += [b.text, ""]
        elif isinstance(b, Bullets):
            lines += [*(f"- {item}" for item in b.items), ""]
        elif isinstance(b, Table):
            lines += [*md_table(b.headers, b.rows, b.right), ""]
            if b.caption:
                lines += [f"*{b.caption}*", ""]
            if b.footnotes:
                lines += [*(f"{n}" for n in b.footnotes), ""]
        elif isinstance(b, FigureBlock):
            lines += _figure_markdown(b.item)
        else:  # pragma: no cover - a new block type must be rendered here
            raise TypeError(f"unknown report block {type(b).__name__}")
    return "\n".join(lines)


def _figure_markdown(item) -> list[str]:
    heading = f"#### {item.title} ({item.facet})"
    if item.skipped:
        return [heading, "", f"*Skipped: {item.skipped}.*", ""]
    lines = [heading, ""]
    embed = next((f for f in item.files if f.rsplit(".", 1)[1] in EMBEDDABLE), None)
    if embed:
        lines += [f"![{item.title}]({embed})", ""]
    if item.files:
        lines += ["Files: " + ", ".join(f"[{f.rsplit('.', 1)[1]}]({f})" for f in item.files), ""]
    return lines
