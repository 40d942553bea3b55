"""The built-in suites as `revbench list --suites` shows them: cells and expected time.

The cells are each suite's expansion (the registry reads without torch: every built-in
suite expands in a few hundredths of a second). Expected time on the estimator: the wall
time of a timed run where revbench/data/suites.csv has one (`measured_minutes`, on 2
cores), else the cost model a run's time left also uses (`revbench.eta`): the suite's
fake-tensor cells cost the sum of their models' seconds per configuration from a timed
main job, which took those seconds over `TIMED_WORKERS` workers (the main job: 391 s over
two, 3.3 minutes, from a run of 3 min 19 s; 1 min 59 s since, the ratios between models
about the same); a dense cell (torchvision's detectors run a real CPU step at full size)
costs 1-3 minutes.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from importlib import resources

from .eta import DENSE_SECONDS, TIMED_WORKERS, suite_seconds
from .methods.estimate_method import on_real_tensors
from .suite import Suite, builtin_suites, expand, load_suite


@dataclass(frozen=True)
class SuiteCells:
    cells: int  # as `revbench run --suite NAME` expands them
    dense_cells: int  # of which detection or segmentation cells
    measured_minutes: float | None = None  # a whole run's wall time, where one was timed
    cost_seconds: float = 0.0  # the fake-tensor cells' cost (revbench.eta.suite_seconds)


def measured_minutes() -> dict[str, float]:
    """revbench/data/suites.csv: the wall time of a timed run of a built-in suite."""
    text = resources.files("revbench.data").joinpath("suites.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return {row["suite"]: float(row["measured_minutes"]) for row in rows}


def suite_cells(suite: Suite) -> SuiteCells:
    """A suite's cells as `revbench run --suite NAME` expands them, and its cost."""
    cells = expand(suite, method="estimate")
    fake = [c for c in cells if not on_real_tensors(c)]
    return SuiteCells(
        len(cells),
        len(cells) - len(fake),
        measured_minutes().get(suite.name),
        round(suite_seconds(fake)),
    )


def estimate_time(counts: SuiteCells) -> str:
    """The expected wall time of the suite on the estimator, rounded as the guess it is:
    the measured time where a run was timed, else the cost model's."""
    if counts.measured_minutes is not None:
        m = counts.measured_minutes
        return "<1 min" if m < 1 else f"~{_rounded(m)} min" if m < 90 else f"~{m / 60:.1f} h"
    fake = counts.cost_seconds / TIMED_WORKERS / 60
    low, high = (fake + counts.dense_cells * s / 60 for s in DENSE_SECONDS)
    if high < 1:
        return "<1 min"
    if not counts.dense_cells:
        return f"~{_rounded(high)} min" if high < 90 else f"~{high / 60:.1f} h"
    if high < 90:
        return f"{_rounded(low)}-{_rounded(high)} min"
    return f"{low / 60:.1f}-{high / 60:.1f} h"


def _rounded(minutes: float) -> int:
    # to the minute under 10 minutes, else to 5: the model is no finer than that. Halves
    # round up (round() would give 4.5 minutes as 4).
    if minutes < 10:
        return max(1, math.floor(minutes + 0.5))
    return math.floor(minutes / 5 + 0.5) * 5


@dataclass(frozen=True)
class SuiteEntry:
    name: str
    description: str
    cells: str
    estimate_time: str


def builtin_suite_entries() -> list[SuiteEntry]:
    entries = []
    for name in builtin_suites():
        suite = load_suite(name)
        counts = suite_cells(suite)
        entries.append(
            SuiteEntry(name, suite.description, str(counts.cells), estimate_time(counts))
        )
    return entries
