"""The gate's comparison policy: which metrics are compared, how strictly, and the verdicts.

Cells are matched on their key (`revbench.cell.KEY_FIELDS`) and compared metric by
metric. Throughput is better higher; every other metric is better lower. Deterministic
metrics must match exactly by default: parameter and MAC counts, and everything the
estimator produces (peak bytes, its breakdown, memory per sample), which is the same on
every machine. Measured metrics (CUDA allocator peaks, step time, throughput) may move
within a tolerance: 5 % for memory, 10 % for time.

Verdicts: `ok` (within tolerance), `REGRESSION` (worse beyond it, a status that got worse,
or a value that vanished), `improved` (better beyond it), `changed?` (different with no
better or worse: a value where the baseline had none, a timeout that became an error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from . import status
from .analysis import FIT_GROUP, per_sample_fit
from .cell import KEY_FIELDS, cell_label
from .errors import UsageError
from .measurement import MEMORY_CATEGORIES

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
        # A max-batch search's answer: exact on the estimator, like every estimated figure.
        # Its peaks are not gated: at another batch they are not comparable.
        Metric("max_batch", "samples", "memory", higher_is_better=True),
    )
}
FIT_METRIC = "bytes_per_sample"
CELL_METRICS = tuple(name for name in METRICS if name != FIT_METRIC)

# Percent a measured metric may move before it counts. The estimator is deterministic, so
# what it produces is gated exactly, like the counts.
MEASURED_TOLERANCE_PCT = {"memory": 5.0, "time": 10.0}
DETERMINISTIC_METHODS = ("estimate",)

OK, REGRESSION, IMPROVED, CHANGED = "ok", "REGRESSION", "improved", "changed?"


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


def metric_value(row: pd.Series, name: str) -> float | None:
    v = row.get(name)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return float(v)


def row_key(row: pd.Series, columns=KEY_FIELDS) -> tuple:
    """The row's values of `columns` (its cell key by default) as a matchable tuple."""
    # pandas reads a record's null as NaN, and NaN != NaN: keys hold None instead.
    return tuple(None if pd.isna(row[c]) else row[c] for c in columns)


def _keyed(df: pd.DataFrame, columns) -> dict[tuple, pd.Series]:
    return {row_key(row, columns): row for _, row in df.iterrows()}


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
    last_of_group = {row_key(cur[key], FIT_GROUP): key for key in matched}
    for key in matched:
        b, c = base[key], cur[key]
        report.cells_compared += 1
        report.rows.extend(_compare_cell(b, c, tolerances))
        group = row_key(c, FIT_GROUP)
        if last_of_group[group] == key and group in fit_rows:
            report.rows.append(fit_rows[group])
    return report


def _compare_cell(b: pd.Series, c: pd.Series, tolerances: dict[str, float]) -> list[Comparison]:
    label = cell_label(c)
    rows = []
    statuses_differ = b["status"] != c["status"]
    if statuses_differ:
        # A worse status is a regression: ok < oom (a result) < timeout, error (no result).
        worst = max(status.RANK.values())
        rank_b = status.RANK.get(b["status"], worst)
        rank_c = status.RANK.get(c["status"], worst)
        verdict = REGRESSION if rank_c > rank_b else IMPROVED if rank_c < rank_b else CHANGED
        rows.append(Comparison(label, "status", b["status"], c["status"], None, verdict))
    for name in CELL_METRICS:
        metric = METRICS[name]
        vb, vc = metric_value(b, name), metric_value(c, name)
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
