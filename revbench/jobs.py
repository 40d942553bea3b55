"""`--jobs auto`: how many CPU workers a run gets, by cores and by memory.

One worker per usable core (the estimator is one Python thread per worker), as many as
the host's available memory holds: each worker's peak host memory is known per model
family and estimator path from measurement (revbench/data/worker_memory.csv: a worker's
peak resident set, torch and the registry included, on the suite's largest cell of that
family), and the run's largest decides. Never more workers than distinct models, since a
model's cells share one worker's traces (`Method.batches_share_work`).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from importlib import resources

from .cell import Cell
from .errors import UsageError

AUTO = "auto"
# Kept free for the run's own process, the system and page cache: a worker past the
# available memory is killed by the host's OOM killer, an error row to retry.
MEMORY_RESERVE = 0.15


def parse_jobs(text: str | int | None) -> int | str | None:
    """`--jobs`: a positive integer or `auto`; None when not given."""
    if text is None or isinstance(text, int):
        value = text
    elif str(text).strip().lower() == AUTO:
        return AUTO
    else:
        try:
            value = int(str(text).strip())
        except ValueError:
            value = 0
    if value is not None and value < 1:
        raise UsageError(f"--jobs {text} is invalid; valid: an integer >= 1, or auto")
    return value


def default_jobs(method: str, local: bool) -> int | str:
    """Workers when --jobs is not given: one per core on the estimator in local workers
    (`auto`), else one."""
    return AUTO if method == "estimate" and local else 1


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes the host can give new processes without swapping (Linux's MemAvailable);
    None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass(frozen=True)
class WorkerMemory:
    family: str
    path: str  # "fake": the estimator's fake tensors; "real": real CPU tensors (detectors)
    peak_bytes: int
    measured_on: str  # the cell it was measured on


def worker_memory() -> dict[tuple[str, str], WorkerMemory]:
    text = resources.files("revbench.data").joinpath("worker_memory.csv").read_text()
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    out = {}
    for row in rows:
        entry = WorkerMemory(
            row["family"], row["path"], int(float(row["peak_mb"]) * 1e6), row["measured_on"]
        )
        out[(entry.family, entry.path)] = entry
    return out


def worker_peak(cells: list[Cell]) -> int:
    """The largest peak host memory a worker reaches on these cells (a family without a
    measurement takes the largest measured on its path)."""
    # start-up: the registry (with its plugins), for a run only: the CLI imports this module
    from .methods.estimate_method import on_real_tensors

    table = worker_memory()
    largest = {
        path: max(e.peak_bytes for e in table.values() if e.path == path)
        for path in {e.path for e in table.values()}
    }
    peak = 0
    for cell in cells:
        path = "real" if on_real_tensors(cell) else "fake"
        entry = table.get((cell.family, path))
        peak = max(peak, entry.peak_bytes if entry else largest[path])
    return peak


def auto_jobs(
    cells: list[Cell], *, cores: int | None = None, memory: int | None = None
) -> tuple[int, str]:
    """Workers for `--jobs auto`, and why that many (for the run's first lines)."""
    cores = usable_cores() if cores is None else cores
    memory = available_memory() if memory is None else memory
    models = len({c.batchless_key for c in cells}) or 1
    jobs, why = cores, f"{cores} core(s)"
    if models < jobs:
        jobs, why = models, f"{models} model(s)"
    if memory is not None and cells:
        per_worker = worker_peak(cells)
        fits = max(1, int(memory * (1 - MEMORY_RESERVE) // per_worker))
        if fits < jobs:
            jobs = fits
            why = f"{memory / 1e9:.1f} GB available, {per_worker / 1e9:.1f} GB per worker"
    return jobs, why
