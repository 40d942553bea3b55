"""The built-in suites as `revbench list --suites` shows them, without importing a model.

Counting a suite's cells needs the model registry (a baseline runs in one mode, a
reversible model in each mode asked), and the registry imports torch and timm: seconds
before anything prints. So the counts live in revbench/data/suites.csv, which
tests/test_cli.py checks against each suite's expansion: a changed suite fails the test
until its row is updated.

Expected time on the estimator: the wall time of a timed run where the table has one
(`measured_minutes`, on 2 cores), else the cost model a run's time left also uses
(`revbench.eta`): the suite's fake-tensor cells cost `cost_seconds`, the sum of their
models' seconds per configuration from a timed main job, which took those seconds over
`TIMED_WORKERS` workers (the main job: 391 s over two, 3.3 minutes, from a run of 3 min
19 s; 1 min 59 s since, the ratios between models about the same); a dense cell
(torchvision's detectors run a real CPU step at full size) costs 1-3 minutes.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import tomllib

from .eta import DENSE_SECONDS, TIMED_WORKERS


def builtin_suites() -> dict[str, Path]:
    """Built-in suite name -> its TOML file, shipped in the revbench.suites package."""
    root = resources.files("revbench.suites")
    return {
        Path(str(p)).stem: Path(str(p))
        for p in sorted(root.iterdir(), key=lambda p: p.name)
        if p.name.endswith(".toml")
    }


@dataclass(frozen=True)
class SuiteCells:
    cells: int  # as `revbench run --suite NAME` expands them
    dense_cells: int  # of which detection or segmentation cells
    measured_minutes: float | None = None  # a whole run's wall time, where one was timed
    cost_seconds: float = 0.0  # the fake-tensor cells' cost (revbench.eta.suite_seconds)


def suite_cells() -> dict[str, SuiteCells]:
    """revbench/data/suites.csv: the cell counts of every built-in suite."""
    text = resources.files("revbench.data").joinpath("suites.csv").read_text(encoding="utf-8")
    return {
        row["suite"]: SuiteCells(
            int(row["cells"]),
            int(row["dense_cells"]),
            float(row["measured_minutes"]) if row["measured_minutes"] else None,
            float(row["cost_seconds"]),
        )
        for row in csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    }


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
    counts = suite_cells()
    entries = []
    for name, path in builtin_suites().items():
        description = tomllib.loads(path.read_text(encoding="utf-8")).get("description", "")
        n = counts.get(name)
        entries.append(
            SuiteEntry(
                name,
                description,
                str(n.cells) if n else "?",
                estimate_time(n) if n else "?",
            )
        )
    return entries
