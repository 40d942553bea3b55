"""`revbench gate`: compare results against a baseline and fail CI on a regression.

    revbench gate --baseline results/reference/ci --current results/ci/20260101-120000
    revbench gate --suite ci                 # run the ci suite, gate it against its baseline
    revbench gate --suite ci --update        # run it and make it the new baseline

Cells are matched on their key (`revbench.cell.KEY_FIELDS`) and compared metric by
metric. Throughput is better higher; every other metric is better lower. Deterministic
metrics must match exactly by default: parameter and MAC counts, and everything the
estimator produces (peak bytes, its breakdown, memory per sample), which is the same on
every machine. Measured metrics (CUDA allocator peaks, step time, throughput) may move
within a tolerance: 5 % for memory, 10 % for time. `--tolerance METRIC=PCT` replaces the
tolerance of a metric for every method.

Verdicts: `ok` (within tolerance), `REGRESSION` (worse beyond it, a status that got worse,
or a value that vanished), `improved` (better beyond it), `changed?` (different with no
better or worse: a value where the baseline had none, a timeout that became an error).
Exit 0 when nothing regressed, 1 on a regression or on a baseline cell missing from the
current results (the gate can no longer vouch for it), 2 on bad input. Improvements and
new cells pass, with a hint to refresh the baseline with `--update`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
import tempfile
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .cell import KEY_FIELDS
from .errors import UsageError
from .results import (
    FIT_GROUP,
    MANIFEST_FILE,
    MEMORY_CATEGORIES,
    RECORD_FIELDS,
    RESULTS_FILE,
    SCHEMA_VERSION,
    Record,
    RunStore,
    environment,
    load,
    load_manifests,
    per_sample_fit,
)

# ---------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Metric:
    name: str  # a Record field, or `bytes_per_sample` from the per-sample fit
    unit: str
    kind: str  # "count", "memory" or "time": picks the default tolerance
    higher_is_better: bool = False


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("params", "parameters", "count"),
        Metric("macs", "MACs", "count"),
        Metric("macs_thop", "MACs", "count"),
        Metric("peak_bytes", "bytes", "memory"),
        Metric("peak_reserved_bytes", "bytes", "memory"),
        Metric("forward_peak_bytes", "bytes", "memory"),
        Metric("backward_peak_bytes", "bytes", "memory"),
        Metric("optimizer_peak_bytes", "bytes", "memory"),
        *(Metric(f"mem_{c}_bytes", "bytes", "memory") for c in MEMORY_CATEGORIES),
        Metric("bytes_per_sample", "bytes", "memory"),
        Metric("step_time_ms_median", "ms", "time"),
        Metric("throughput_samples_per_s", "samples/s", "time", higher_is_better=True),
    )
}
FIT_METRIC = "bytes_per_sample"
CELL_METRICS = tuple(name for name in METRICS if name != FIT_METRIC)

# Percent a measured metric may move before it counts. The estimator is deterministic, so
# what it produces is gated exactly, like the counts.
MEASURED_TOLERANCE_PCT = {"memory": 5.0, "time": 10.0}
DETERMINISTIC_METHODS = ("estimate",)

# A worse status is a regression: ok < oom (a result) < timeout, error (no result).
STATUS_RANK = {"ok": 0, "oom": 1, "timeout": 2, "error": 2}

OK, REGRESSION, IMPROVED, CHANGED = "ok", "REGRESSION", "improved", "changed?"
VERDICT_STYLE = {OK: "", REGRESSION: "bold red", IMPROVED: "green", CHANGED: "yellow"}


def default_tolerance(metric: Metric, method: str) -> float:
    if metric.kind == "count" or method in DETERMINISTIC_METHODS:
        return 0.0
    return MEASURED_TOLERANCE_PCT[metric.kind]


def parse_tolerances(specs: list[str] | None) -> dict[str, float]:
    """`["peak_bytes=2", "step_time_ms_median=15"]` -> {metric: percent}."""
    out: dict[str, float] = {}
    for spec in specs or []:
        for item in filter(None, (s.strip() for s in spec.split(","))):
            name, sep, value = item.partition("=")
            name = name.strip()
            if not sep or not name:
                raise UsageError(
                    f"tolerance {item!r} is malformed; write METRIC=PERCENT, e.g. peak_bytes=2"
                )
            if name not in METRICS:
                raise UsageError(
                    f"unknown metric {name!r} in --tolerance; valid: {', '.join(METRICS)}"
                )
            try:
                pct = float(value.strip().removesuffix("%"))
            except ValueError:
                pct = math.nan
            if not math.isfinite(pct) or pct < 0:
                raise UsageError(
                    f"tolerance {item!r} is malformed: {value.strip()!r} is not a "
                    "non-negative percentage"
                )
            out[name] = pct
    return out


# ------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Comparison:
    """One metric of one cell (or of one per-sample fit), baseline against current."""

    cell: str
    metric: str
    baseline: float | str | None
    current: float | str | None
    tolerance_pct: float | None
    verdict: str

    @property
    def change(self) -> float | None:
        if isinstance(self.baseline, (int, float)) and isinstance(self.current, (int, float)):
            return self.current - self.baseline
        return None

    @property
    def change_pct(self) -> float | None:
        change = self.change
        if change is None:
            return None
        if self.baseline == 0:
            return 0.0 if change == 0 else math.copysign(math.inf, change)
        return 100.0 * change / abs(self.baseline)


@dataclass
class GateReport:
    rows: list[Comparison]
    missing: list[str] = field(default_factory=list)  # baseline cells the current run lacks
    new: list[str] = field(default_factory=list)  # current cells the baseline lacks
    cells_compared: int = 0

    def with_verdict(self, verdict: str) -> list[Comparison]:
        return [r for r in self.rows if r.verdict == verdict]

    @property
    def passed(self) -> bool:
        return not self.with_verdict(REGRESSION) and not self.missing

    @property
    def needs_refresh(self) -> bool:
        return bool(self.with_verdict(IMPROVED) or self.with_verdict(CHANGED) or self.new)


def judge(metric: Metric, baseline: float | None, current: float | None, tol_pct: float) -> str:
    """The verdict on one value. A vanished value is a regression; a new one, a change."""
    if current is None:
        return REGRESSION
    if baseline is None:
        return CHANGED
    worse = baseline - current if metric.higher_is_better else current - baseline
    limit = abs(baseline) * tol_pct / 100.0
    if worse > limit:
        return REGRESSION
    if -worse > limit:
        return IMPROVED
    return OK


def _value(row: pd.Series, name: str) -> float | None:
    v = row.get(name)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return float(v)


def cell_label(row: pd.Series, batch: str | None = None) -> str:
    """'revvit_small[depth=4] reversible 32px b2 fp32 train (estimate)'."""
    variant = f"[{row['variant']}]" if row["variant"] else ""
    b = batch if batch is not None else str(int(row["batch_size"]))
    return (
        f"{row['model']}{variant} {row['mode']} {int(row['resolution'])}px b{b} "
        f"{row['precision']} {row['scenario']} ({row['method']})"
    )


def _keyed(df: pd.DataFrame, columns: list[str]) -> dict[tuple, pd.Series]:
    return {tuple(row[c] for c in columns): row for _, row in df.iterrows()}


def compare(
    baseline: pd.DataFrame, current: pd.DataFrame, tolerances: dict[str, float] | None = None
) -> GateReport:
    """Every metric of every cell present on both sides, and the cells on one side only."""
    tolerances = tolerances or {}
    base = _keyed(baseline, list(KEY_FIELDS))
    cur = _keyed(current, list(KEY_FIELDS))
    report = GateReport(rows=[])
    report.missing = [cell_label(row) for key, row in base.items() if key not in cur]
    report.new = [cell_label(row) for key, row in cur.items() if key not in base]

    # Each cell's rows; a fit group's bytes_per_sample follows the group's last cell.
    fit_rows = _compare_fits(baseline, current, tolerances)
    matched = [key for key in cur if key in base]
    last_of_group = {tuple(cur[key][c] for c in FIT_GROUP): key for key in matched}
    for key in matched:
        b, c = base[key], cur[key]
        report.cells_compared += 1
        report.rows.extend(_compare_cell(b, c, tolerances))
        group = tuple(c[col] for col in FIT_GROUP)
        if last_of_group[group] == key and group in fit_rows:
            report.rows.append(fit_rows[group])
    return report


def _compare_cell(b: pd.Series, c: pd.Series, tolerances: dict[str, float]) -> list[Comparison]:
    label = cell_label(c)
    rows = []
    statuses_differ = b["status"] != c["status"]
    if statuses_differ:
        rank_b = STATUS_RANK.get(b["status"], 2)
        rank_c = STATUS_RANK.get(c["status"], 2)
        verdict = REGRESSION if rank_c > rank_b else IMPROVED if rank_c < rank_b else CHANGED
        rows.append(Comparison(label, "status", b["status"], c["status"], None, verdict))
    for name in CELL_METRICS:
        metric = METRICS[name]
        vb, vc = _value(b, name), _value(c, name)
        if vb is None and vc is None:
            continue
        if statuses_differ and (vb is None or vc is None):
            continue  # a failed cell has no figures: the status row says it already
        tol = tolerances.get(name, default_tolerance(metric, c["method"]))
        rows.append(Comparison(label, name, vb, vc, tol, judge(metric, vb, vc, tol)))
    return rows


def _fits(df: pd.DataFrame) -> dict[tuple, pd.Series]:
    """per_sample_fit rows of the estimated cells, by fit group."""
    estimated = df[df["method"].isin(DETERMINISTIC_METHODS)]
    fit = per_sample_fit(estimated) if not estimated.empty else pd.DataFrame()
    return _keyed(fit, FIT_GROUP) if not fit.empty else {}


def _compare_fits(
    baseline: pd.DataFrame, current: pd.DataFrame, tolerances: dict[str, float]
) -> dict[tuple, Comparison]:
    """bytes_per_sample of each fit group the estimator measured, on either side."""
    base, cur = _fits(baseline), _fits(current)
    metric = METRICS[FIT_METRIC]
    out = {}
    for key in [*cur, *(k for k in base if k not in cur)]:
        b, c = base.get(key), cur.get(key)
        row = c if c is not None else b
        label = cell_label(row, batch=row["batch_sizes"])
        # Peaks are whole bytes; the least-squares slope is rounded so float noise is no change.
        vb = round(b[FIT_METRIC]) if b is not None else None
        vc = round(c[FIT_METRIC]) if c is not None else None
        if b is not None and c is not None and b["batch_sizes"] != c["batch_sizes"]:
            verdict, tol = CHANGED, None  # fitted over other batch sizes: not comparable
        else:
            tol = tolerances.get(FIT_METRIC, default_tolerance(metric, row["method"]))
            verdict = judge(metric, vb, vc, tol)
        out[key] = Comparison(label, FIT_METRIC, vb, vc, tol, verdict)
    return out


# ---------------------------------------------------------------------------- loading


def load_side(paths: list[str], what: str) -> pd.DataFrame:
    try:
        df = load(*paths)
    except UsageError as e:
        raise UsageError(f"{what}: {e}") from None
    if df.empty:
        raise UsageError(f"{what}: no records in {', '.join(paths)}")
    return df


def check_same_suite(baseline: pd.DataFrame, current: pd.DataFrame) -> None:
    b, c = sorted(set(baseline["suite"])), sorted(set(current["suite"]))
    if b != c:
        raise UsageError(
            f"baseline is suite {', '.join(b)} but current is suite {', '.join(c)}; "
            "gate runs of the same suite"
        )


# ---------------------------------------------------------------------------- output


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
        numeric = col in ("baseline", "current", "change", "change %", "tolerance")
        table.add_column(col, justify="right" if numeric else "left")
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


def print_text(report: GateReport, title: str, refresh_hint: str, console: Console) -> None:
    console.print(_rich_table(title, report.rows))
    if report.missing or report.new:
        table = Table(title="cells on one side only")
        table.add_column("cell")
        table.add_column("where")
        for label in report.missing:
            table.add_row(escape(label), "baseline only: missing from current", style="bold red")
        for label in report.new:
            table.add_row(escape(label), "current only: new", style="yellow")
        console.print(table)
    notable = [r for r in report.rows if r.verdict != OK]
    if notable:
        # Again at the end, where a CI log is read: only what is not ok.
        console.print(_rich_table("not ok", notable))
    for line in summary_lines(report, refresh_hint):
        style = "bold red" if line.startswith("gate FAILED") else None
        console.print(escape(line), style=style, highlight=False, soft_wrap=True)


def _md_row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _md_table(rows: list[Comparison]) -> list[str]:
    align = ["---" if h in ("cell", "metric", "verdict") else "--:" for h in HEADER]
    out = [_md_row(HEADER), _md_row(align)]
    for row in rows:
        cells = list(_cells(row))
        if row.verdict == REGRESSION:
            cells[-1] = f"**{REGRESSION}**"
        out.append(_md_row(cells))
    return out


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
        lines += [_md_row(("cell on one side only", "where")), _md_row(("---", "---"))]
        lines += [_md_row((c, "baseline only: missing from current")) for c in report.missing]
        lines += [_md_row((c, "current only: new")) for c in report.new]
        lines.append("")
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
    ok = current[current["status"] == "ok"]
    for _, row in ok.iterrows():
        for name in EXPORTED:
            value = _value(row, name)
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


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


# ---------------------------------------------------------------------------- update

_INT_FIELDS = {f.name for f in fields(Record) if re.match(r"int\b", str(f.type))}


def plain_records(df: pd.DataFrame) -> list[dict]:
    """Rows as Record dicts again: pandas turns missing values into NaN and ints into
    floats; the baseline file keeps the types the run wrote."""
    out = []
    for _, row in df.iterrows():
        record = {}
        for name in RECORD_FIELDS:
            v = row[name]
            if isinstance(v, float) and math.isnan(v):
                v = None
            elif hasattr(v, "item"):  # numpy scalar
                v = v.item()
            if name in _INT_FIELDS and v is not None:
                v = int(v)
            record[name] = v
        out.append(record)
    return out


def baseline_files(baseline: Path) -> tuple[Path, Path]:
    """(results file, manifest) that --update writes for a baseline file or run directory."""
    if baseline.suffix == ".jsonl":
        return baseline, baseline.parent / MANIFEST_FILE
    if baseline.is_dir():
        others = [p for p in baseline.rglob("*.jsonl") if p != baseline / RESULTS_FILE]
        if others:
            raise UsageError(
                f"baseline directory {baseline} holds other results files ({others[0]}); "
                "give a run directory or a .jsonl file"
            )
    return baseline / RESULTS_FILE, baseline / MANIFEST_FILE


def update_baseline(
    baseline: Path, current: pd.DataFrame, sources: list[str], command: str
) -> Path:
    """Replace the baseline with the current records: results.jsonl + manifest.json."""
    results_path, manifest_path = baseline_files(baseline)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    manifests = load_manifests(*sources)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "suite": ",".join(sorted(set(current["suite"]))),
        # The environment the figures were produced in, not the one that copied them.
        "environment": manifests[-1].get("environment") if manifests else environment(),
        "invocations": [
            *(inv for m in manifests for inv in m.get("invocations", [])),
            {
                "command": command,
                "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "cells": len(current),
            },
        ],
    }
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in plain_records(current))
    _write_atomic(results_path, lines)
    _write_atomic(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return results_path


# ------------------------------------------------------------------------------- CLI


def cmd_gate(args: argparse.Namespace) -> int:
    # Every input is checked before the suite runs: a typo should not cost a run.
    tolerances = parse_tolerances(args.tolerance)
    if bool(args.current) == bool(args.suite):
        raise UsageError("give either --current RESULTS or --suite NAME (to run it first)")
    suite_name = None
    if args.suite:
        from .suite import load_suite

        suite_name = load_suite(args.suite).name
    if args.baseline is None:
        if suite_name is None:
            raise UsageError("--baseline is required with --current")
        args.baseline = str(Path("results") / "reference" / suite_name)
    baseline = None
    if not args.update:
        baseline = load_side([args.baseline], "baseline")
    elif Path(args.baseline).exists():
        try:
            baseline = load_side([args.baseline], "baseline")
        except UsageError as e:  # an unreadable baseline (an old schema) is what --update fixes
            print(f"note: {e}; --update replaces it", file=sys.stderr)
    if args.update:
        baseline_files(Path(args.baseline))  # refuses a directory it cannot write
    if not args.suite:
        return run_gate(args, baseline, args.current, tolerances)
    with tempfile.TemporaryDirectory(prefix="revbench-gate-") as tmp:
        out = Path(args.out or tmp)
        code = _run_suite(args, out)
        if code != 0:
            return code
        run_dir = RunStore.latest(out, suite_name).dir
        code = run_gate(args, baseline, [str(run_dir)], tolerances)
        if not args.out:
            print("the run's directory was temporary: --out DIR keeps it", file=sys.stderr)
        return code


def _run_suite(args: argparse.Namespace, out: Path) -> int:
    from .cli import main as cli_main

    argv = ["run", "--suite", args.suite, "--device", args.device, "--out", str(out)]
    return cli_main(argv + (["--no-thop"] if args.no_thop else []))


def run_gate(
    args: argparse.Namespace,
    baseline: pd.DataFrame | None,
    sources: list[str],
    tolerances: dict[str, float],
) -> int:
    """Compare, print, export, update; the exit code."""
    current = load_side(sources, "current")
    if baseline is not None:
        check_same_suite(baseline, current)
    refresh = shlex.join(
        ["revbench", "gate", "--baseline", args.baseline]
        + (["--suite", args.suite] if args.suite else ["--current", *sources])
        + ["--update"]
    )
    report = None
    if baseline is not None:
        report = compare(baseline, current, tolerances)
        title = f"revbench gate: {', '.join(sources)} against baseline {args.baseline}"
        if args.format == "markdown":
            print(markdown(report, title, refresh))
        else:
            terminal = Console()
            print_text(
                report, title, refresh, terminal if terminal.is_terminal else Console(width=220)
            )
    if args.export_json:
        path = Path(args.export_json)
        _write_atomic(path, json.dumps(benchmark_entries(current), indent=1) + "\n")
        print(f"benchmark JSON (customSmallerIsBetter): {path}", file=sys.stderr)
    if not args.update:
        return 0 if report.passed else 1
    command = shlex.join(["revbench", *getattr(args, "argv", ["gate"])])
    written = update_baseline(Path(args.baseline), current, sources, command)
    if report is None:
        what = "a new baseline"
    else:
        changed = len({r.cell for r in report.rows if r.verdict != OK and r.metric != FIT_METRIC})
        what = (
            f"{report.cells_compared} kept ({changed} with changes), "
            f"{len(report.new)} new, {len(report.missing)} removed"
        )
    print(f"baseline updated: {written}: {len(current)} cell(s): {what}", file=sys.stderr)
    failed = sorted(set(current["status"]) - {"ok", "oom"})
    if failed:
        print(f"note: the new baseline has cells with status {', '.join(failed)}", file=sys.stderr)
    return 0


def register_cli(sub) -> None:
    gate = sub.add_parser(
        "gate",
        help="compare results against a baseline; exit 1 on a regression",
        description=__doc__.split("\n\n")[0],
        epilog="verdicts: ok, REGRESSION, improved, changed?. exit status: 0 nothing regressed, "
        "1 a regression or a baseline cell missing from the current results, 2 bad input",
    )
    gate.add_argument(
        "--baseline",
        help="baseline results file or run directory "
        "(default with --suite: results/reference/SUITE)",
    )
    gate.add_argument("--current", nargs="+", help="results files or run directories to gate")
    gate.add_argument(
        "--suite", help="run this suite first (as `revbench run`) and gate its results"
    )
    gate.add_argument("--device", default="estimate", help="--suite's device (default: estimate)")
    gate.add_argument("--out", help="--suite's results directory (default: a temporary one)")
    gate.add_argument("--no-thop", action="store_true", help="--suite runs without thop")
    gate.add_argument(
        "--tolerance",
        action="append",
        metavar="METRIC=PCT",
        help="allowed change in percent, for every method (repeatable; default: exact for "
        "counts and estimates, 5 for measured memory, 10 for time)",
    )
    gate.add_argument(
        "--update",
        action="store_true",
        help="make the current results the baseline (a .jsonl file or a run directory)",
    )
    gate.add_argument("--format", choices=("text", "markdown"), default="text")
    gate.add_argument(
        "--export-json",
        metavar="PATH",
        help="write github-action-benchmark customSmallerIsBetter JSON of the current results",
    )
    gate.set_defaults(func=cmd_gate)
