"""The built-in suites as `revbench list --suites` shows them, without importing a model.

Counting a suite's cells needs the model registry (a baseline runs in one mode, a
reversible model in each mode asked), and the registry imports torch and timm: seconds
before anything prints. So the counts live in revbench/data/suites.csv, which
tests/test_cli.py checks against each suite's expansion: a changed suite fails the test
until its row is updated.

Expected time on the estimator: the wall time of a timed run where the table has one
(`measured_minutes`, on 2 cores), else from a per-cell cost model:
- a fake-tensor cell (every classification model) costs SECONDS_PER_CELL of wall time:
  `revbench run --suite imagenet-train-mem` (150 cells, 45 models, --jobs auto = 2
  workers, idle 2-core machine) took 5.0 minutes cold. The estimator's cost is per
  model: a model's first two batch sizes are traced (about 2-12 s each, deep RevBiFPNs
  the most), its others follow from those traces, so the per-cell figure is a guide only;
- a dense cell (torchvision's detectors run a real CPU step at full size,
  revbench/methods/estimate_dense.py) costs 1-3 minutes on one core.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import tomllib

SECONDS_PER_CELL = 2.0  # fake-tensor estimator cell, wall time on 2 workers: see above
DENSE_MINUTES_PER_CELL = (1.0, 3.0)  # a real CPU step at detection size


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


def suite_cells() -> dict[str, SuiteCells]:
    """revbench/data/suites.csv: the cell counts of every built-in suite."""
    text = resources.files("revbench.data").joinpath("suites.csv").read_text(encoding="utf-8")
    return {
        row["suite"]: SuiteCells(
            int(row["cells"]),
            int(row["dense_cells"]),
            float(row["measured_minutes"]) if row["measured_minutes"] else None,
        )
        for row in csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    }


def estimate_time(counts: SuiteCells) -> str:
    """The expected wall time of the suite on the estimator, rounded as the guess it is:
    the measured time where a run was timed, else the cost model's."""
    if counts.measured_minutes is not None:
        m = counts.measured_minutes
        return "<1 min" if m < 1 else f"~{_rounded(m)} min" if m < 90 else f"~{m / 60:.1f} h"
    fake = (counts.cells - counts.dense_cells) * SECONDS_PER_CELL / 60
    low, high = (fake + counts.dense_cells * m for m in DENSE_MINUTES_PER_CELL)
    if high < 1:
        return "<1 min"
    if not counts.dense_cells:
        return f"~{_rounded(high)} min" if high < 90 else f"~{high / 60:.1f} h"
    if high < 90:
        return f"{_rounded(low)}-{_rounded(high)} min"
    return f"{low / 60:.1f}-{high / 60:.1f} h"


def _rounded(minutes: float) -> int:
    # to the minute under 10 minutes, else to 5: the model is no finer than that
    return max(1, round(minutes)) if minutes < 10 else round(minutes / 5) * 5


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
