"""Time left in a run: what each cell is expected to cost, corrected by the pace so far.

Cells differ by a hundred times (a ViT-S estimate against a RevBiFPN-S6 one), and on the
estimator a model's first two batch sizes cost its traces while the others follow from
them in milliseconds, so the mean time per finished cell misleads: it promised 23 minutes
at cell 11 of a run that took 51. Each cell instead gets an expected cost:

- the model's seconds from `revbench/data/cell_costs.csv` (a timed run of the built-in
  suites: each model's cost per configuration, its count and traces), else the median of
  its family's, else of all;
- on a method whose batch sizes share work (the estimator), a configuration's cost is
  split over its cells in the order they finish (`SHARED_PARTS`, then `EXTRAPOLATED`); on
  the other methods every cell runs its own steps and carries the cost whole.

The time left is the cost of the cells left times the pace: the wall time so far over the
cost of the cells finished. The pace absorbs what the table cannot know (this machine's
speed, the number of workers, cells answered from the estimate cache).
"""

from __future__ import annotations

import csv
import functools
import statistics
from collections.abc import Sequence
from importlib import resources

# On the estimator, a configuration's cost split over its cells in the order they finish:
# the first carries the model's build, count and first trace, the second its second trace,
# the others follow from the two traces.
SHARED_PARTS = (0.6, 0.4)
EXTRAPOLATED = 0.01
# A dense estimator cell (torchvision's detectors: a real CPU step, revbench/methods/
# estimate_dense.py) runs on its own: 1-3 minutes on one core at the full 1333x800
# (DENSE_SIDE); its work goes with the pixels, so a 128-px cell takes seconds.
DENSE_SECONDS = (60.0, 180.0)
DENSE_SIDE = 800
# The timed run behind the table ran two workers: its seconds are a worker's, and a suite
# on that machine takes their sum over two.
TIMED_WORKERS = 2
SETTLED = 0.05  # the share of a run's cost after which its own pace is trusted


@functools.cache
def model_seconds() -> dict[str, tuple[str, float]]:
    """model -> (family, seconds per configuration) from the data table."""
    text = resources.files("revbench.data").joinpath("cell_costs.csv").read_text()
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return {r["model"]: (r["family"], float(r["seconds"])) for r in rows}


def model_cost(model: str, family: str) -> float:
    """Seconds per configuration of `model`: its own, else its family's median, else all's."""
    known = model_seconds()
    if model in known:
        return known[model][1]
    same = [s for f, s in known.values() if f == family]
    return statistics.median(same or [s for _, s in known.values()])


class Eta:
    """Expected cost of a run's cells, and the time left as they finish (see the module).

    `cells`: those the run will measure; `shares_work`: whether their method costs per
    configuration (`Method.batches_share_work`); `dense`: which of them run a real step
    of their own on the estimator (`revbench.methods.estimate.on_real_tensors`);
    `workers`: how many run at once."""

    def __init__(
        self,
        cells: Sequence,
        shares_work: bool,
        dense=lambda cell: False,
        workers: int = TIMED_WORKERS,
    ):
        self.workers = max(workers, 1)
        self._config = {
            c.key: c.batchless_key if shares_work and not dense(c) else c.key for c in cells
        }
        self._parts: dict[tuple, list[float]] = {}
        for cell in cells:
            cost = model_cost(cell.model, cell.family)
            parts = self._parts.setdefault(self._config[cell.key], [])
            if shares_work and dense(cell):
                parts.append(sum(DENSE_SECONDS) / 2 * (cell.resolution / DENSE_SIDE) ** 2)
            elif not shares_work:
                parts.append(cost)
            else:
                nth = len(parts)
                parts.append(
                    cost * (SHARED_PARTS[nth] if nth < len(SHARED_PARTS) else EXTRAPOLATED)
                )
        self.done_cost = 0.0
        self.left_cost = sum(sum(p) for p in self._parts.values())

    def costliest_first(self, cells: Sequence) -> list:
        """`cells` with the costliest configurations first, each configuration's cells in
        their order: several workers then finish together rather than one taking the
        last big model alone (longest processing time first). Call before `done`."""
        cost = {config: sum(parts) for config, parts in self._parts.items()}
        return sorted(cells, key=lambda cell: -cost[self._config[cell.key]])

    def done(self, key: tuple) -> None:
        """The cell with `key` finished: its configuration's next part is spent."""
        parts = self._parts.get(self._config.get(key))
        if parts:
            cost = parts.pop(0)
            self.done_cost += cost
            self.left_cost -= cost

    def seconds_left(self, elapsed: float) -> float | None:
        """The time left at the pace so far; None before anything has finished.

        Until a `SETTLED` share of the cost is done, the pace is mostly the workers' start-up
        (seconds of imports before a first cell), and the table's own seconds over the
        run's `workers` are the better guess."""
        if self.done_cost <= 0:
            return None
        left = max(self.left_cost, 0.0)
        if self.done_cost < SETTLED * (self.done_cost + left):
            return left / self.workers
        return elapsed / self.done_cost * left


def suite_seconds(cells: Sequence) -> float:
    """The estimator's expected cost of a suite's fake-tensor cells, in the table's
    worker-seconds (`revbench list --suites` divides by `TIMED_WORKERS`; revbench/data/
    suites.csv keeps it per built-in suite, checked against the suites by the tests)."""
    return Eta(cells, shares_work=True).left_cost
