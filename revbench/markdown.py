"""Markdown tables, written one way for the report and the gate."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


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
