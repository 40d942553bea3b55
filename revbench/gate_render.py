"""How the gate shows a comparison: a rich table for terminals, Markdown for CI logs and
pull-request comments, and github-action-benchmark JSON of the current figures."""

from __future__ import annotations

import math

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import status
from .analysis import per_sample_fit
from .cell import cell_label
from .comparison import (
    CHANGED,
    DETERMINISTIC_METHODS,
    FIT_METRIC,
    IMPROVED,
    METRICS,
    OK,
    REGRESSION,
    Comparison,
    GateReport,
    metric_value,
)
from .markdown import md_table

VERDICT_STYLE = {OK: "", REGRESSION: "bold red", IMPROVED: "green", CHANGED: "yellow"}


def _fmt(metric: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if metric in METRICS and METRICS[metric].kind == "time":
        return f"{value:,.2f}"
    return f"{value:,.0f}"


def _fmt_change(row: Comparison) -> tuple[str, str]:
    change, pct = row.change, row.change_pct
    if change is None:
        return "", ""
    if math.isinf(pct):
        pct_text = f"{'+' if pct > 0 else '-'}inf%"
    elif pct != 0 and abs(pct) < 0.005:
        pct_text = f"{pct:+.1e}%"  # a single byte on hundreds of MB still shows
    else:
        pct_text = f"{pct:+.2f}%"
    return ("+" if change > 0 else "") + _fmt(row.metric, change), pct_text


def _fmt_tol(row: Comparison) -> str:
    if row.tolerance_pct is None:
        return ""
    return "exact" if row.tolerance_pct == 0 else f"{row.tolerance_pct:g}%"


HEADER = ("cell", "metric", "baseline", "current", "change", "change %", "tolerance", "verdict")
NUMERIC = ("baseline", "current", "change", "change %", "tolerance")


def _cells(row: Comparison) -> tuple[str, ...]:
    change, pct = _fmt_change(row)
    return (
        row.cell,
        row.metric,
        _fmt(row.metric, row.baseline),
        _fmt(row.metric, row.current),
        change,
        pct,
        _fmt_tol(row),
        row.verdict,
    )


def _rich_table(title: str, rows: list[Comparison]) -> Table:
    table = Table(title=title)
    for col in HEADER:
        table.add_column(col, justify="right" if col in NUMERIC else "left")
    for row in rows:
        # Escaped: a variant label such as '[depth=4]' would be read as markup.
        table.add_row(*map(escape, _cells(row)), style=VERDICT_STYLE[row.verdict] or None)
    return table


def summary_lines(report: GateReport, refresh_hint: str) -> list[str]:
    n_reg = len(report.with_verdict(REGRESSION))
    counts = (
        f"{len(report.rows)} metric(s) in {report.cells_compared} cell(s) compared: "
        f"{n_reg} regression(s), {len(report.with_verdict(IMPROVED))} improvement(s), "
        f"{len(report.with_verdict(CHANGED))} changed?, {len(report.missing)} baseline "
        f"cell(s) missing, {len(report.new)} new cell(s)"
    )
    lines = [f"gate {'passed' if report.passed else 'FAILED'}: {counts}"]
    if report.missing:
        lines.append(
            "missing cells fail the gate: run them, or drop them from the baseline with --update"
        )
    if report.needs_refresh:
        lines.append(f"if these changes are intended, refresh the baseline: {refresh_hint}")
    return lines


def print_text(
    report: GateReport, title: str, refresh_hint: str, console: Console, verbose: bool = False
) -> None:
    """The verdict first, then what is not ok and the cells on one side only; every
    compared metric (hundreds of rows for the ci suite) only when `verbose`."""
    console.print(escape(title), highlight=False, soft_wrap=True)
    for line in summary_lines(report, refresh_hint):
        style = "bold red" if line.startswith("gate FAILED") else None
        console.print(escape(line), style=style, highlight=False, soft_wrap=True)
    notable = [r for r in report.rows if r.verdict != OK]
    if notable:
        console.print(_rich_table("not ok", notable))
    if report.missing or report.new:
        table = Table(title="cells on one side only")
        table.add_column("cell")
        table.add_column("where")
        for label in report.missing:
            table.add_row(escape(label), "baseline only: missing from current", style="bold red")
        for label in report.new:
            table.add_row(escape(label), "current only: new", style="yellow")
        console.print(table)
    if verbose:
        console.print(_rich_table(f"all {len(report.rows)} compared metrics", report.rows))
    elif report.rows:
        console.print(f"(--verbose lists all {len(report.rows)} compared metrics)")


def _md_table(rows: list[Comparison]) -> list[str]:
    cells = [list(_cells(row)) for row in rows]
    for row, line in zip(rows, cells):
        if row.verdict == REGRESSION:
            line[-1] = f"**{REGRESSION}**"
    return md_table(HEADER, cells, right=NUMERIC)


def markdown(report: GateReport, title: str, refresh_hint: str) -> str:
    """GitHub-flavoured markdown for a CI log or a pull-request comment."""
    head, *rest = summary_lines(report, refresh_hint)
    lines = [f"### {title}", "", f"**{head}**", ""]
    lines += [f"> {line}" for line in rest]
    if rest:
        lines.append("")
    notable = [r for r in report.rows if r.verdict != OK]
    if notable:
        lines += _md_table(notable) + [""]
    if report.missing or report.new:
        sides = [(c, "baseline only: missing from current") for c in report.missing]
        sides += [(c, "current only: new") for c in report.new]
        lines += md_table(("cell on one side only", "where"), sides) + [""]
    lines += [f"<details><summary>all {len(report.rows)} compared metrics</summary>", ""]
    lines += _md_table(report.rows) + ["", "</details>"]
    return "\n".join(lines)


# ------------------------------------------------------------------------- JSON export

# The headline figures github-action-benchmark charts, all smaller-is-better. Throughput
# is left out: it is batch size / median step time, so the step-time entry carries it.
EXPORTED = ("peak_bytes", "peak_reserved_bytes", "step_time_ms_median")


def benchmark_entries(current: pd.DataFrame) -> list[dict]:
    """`customSmallerIsBetter` entries: [{"name", "unit", "value"}, ...]."""
    entries = []
    ok = current[current["status"] == status.OK]
    for _, row in ok.iterrows():
        for name in EXPORTED:
            value = metric_value(row, name)
            if value is not None:
                value = value if METRICS[name].kind == "time" else int(value)
                entries.append(
                    {
                        "name": f"{cell_label(row)} {name}",
                        "unit": METRICS[name].unit,
                        "value": value,
                    }
                )
    estimated = ok[ok["method"].isin(DETERMINISTIC_METHODS)]
    fit = per_sample_fit(estimated) if not estimated.empty else pd.DataFrame()
    for _, row in fit.iterrows():
        entries.append(
            {
                "name": f"{cell_label(row, batch=row['batch_sizes'])} {FIT_METRIC}",
                "unit": "bytes",
                "value": round(row[FIT_METRIC]),
            }
        )
    return entries
