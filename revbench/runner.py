"""Running a suite's cells into a run directory: progress, resume, counts, snapshots.

`run_suite` is the function behind `revbench run` and `revbench gate --suite`: it opens
(or resumes) a run directory, holds its lock, records the invocation in its manifest and
measures every cell, appending each record as soon as it is measured.

Cells run one after another by default; `jobs` workers (`--jobs N`, GPU-free methods) or one
worker per card (`--gpus`, pinned with CUDA_VISIBLE_DEVICES) share them, each cell still in a
worker under its timeout; `launcher="submitit"` hands them to submitit as a job array
(`revbench.launchers`). However they run, every record goes through `RunStore.append`.

What each ending leaves behind: a finished cell is a record on disk (flushed, fsynced); a
failed, crashed, hung or out-of-memory cell is a record with its status; Ctrl-C or a kill
loses only the cell in flight (at most a torn last line, repaired by the next --resume);
a killed parent takes its workers with it.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from . import status
from .cell import KEY_FIELDS, Cell, bytes_label
from .errors import UsageError
from .launcher import Outcome, WorkerPool, run_inline, run_isolated
from .measurement import Counts
from .methods import get_method
from .outputs import check_output_dir
from .progress import CellProgress
from .records import Record
from .store import RunStore
from .suite import Suite, expand

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    store: RunStore
    records: list[Record]  # the records this invocation wrote
    skipped: int  # cells already measured by an earlier invocation (--resume)
    interrupted: bool = False


def open_store(out: str | Path, suite: str, resume: str | Path | None = None) -> RunStore:
    """A new run directory under out/suite/, or the one to resume: "latest" or a path.

    Checked before anything is written: an unusable `out`, or nothing to resume, is a
    UsageError.
    """
    if resume is None:
        check_output_dir(out, "--out", run_root=True)
        return RunStore.create(Path(out), suite)
    latest = str(resume) == "latest"
    store = RunStore.latest(Path(out), suite) if latest else RunStore(Path(resume))
    if store is None or not store.manifest_path.is_file():
        where = Path(out) / suite if latest else resume
        raise UsageError(f"nothing to resume at {where}: no run directory with a manifest.json")
    return store


def check_resume(store: RunStore, suite: str, method: str, cells: list[Cell]) -> None:
    """Refuse to resume a run of another suite or method, a results file that is not
    wholly valid, or cells whose stored timings were taken with other step counts.

    Read-only: called with the lock held, before anything is written.
    """
    manifest = store.read_manifest() or {}
    methods = [i.get("method") for i in manifest.get("invocations", []) if isinstance(i, dict)]
    run_method = next((m for m in reversed(methods) if m), None)
    run_suite = manifest.get("suite")
    if run_suite != suite or run_method not in (None, method):
        raise UsageError(
            f"--resume {store.dir}: that run is suite {run_suite!r} with method "
            f"{run_method!r}, this command suite {suite!r} with method {method!r}; resume "
            "with the run's suite and --device, or start a new run"
        )
    stored = {
        tuple(row.get(f) for f in KEY_FIELDS): row
        for row in store.rows()  # every line validated
        if row["status"] in status.FINAL
    }
    # Warm-up and measured steps are not part of the key (revbench.cell.KEY_FIELDS): a
    # timed figure sampled over other steps is refused rather than mixed in.
    for cell in cells:
        row = stored.get(cell.key)
        if row is None or row.get("step_time_ms_median") is None:
            continue
        for name in ("warmup_steps", "measure_steps"):
            if row.get(name) is not None and row[name] != getattr(cell, name):
                raise UsageError(
                    f"--resume {store.dir}: {cell.label()} was timed with {name} "
                    f"{row[name]}, this command asks {getattr(cell, name)}; start a new run "
                    "to time it otherwise"
                )


def run_suite(
    suite: Suite,
    *,
    method: str,
    cells: list[Cell] | None = None,
    out: str | Path = "results",
    resume: str | Path | None = None,
    isolate: bool = True,
    memory_snapshot: bool = False,
    thop: bool = True,
    command: str = "",
    note: str | None = None,
    console: Console | None = None,
    jobs: int = 1,
    gpus: list[str] | None = None,
    launcher: str = "local",
    launcher_options: dict | None = None,
) -> RunSummary:
    """Measure `cells` (default: every cell of `suite`) into a run directory under `out`.

    `resume` continues a run ("latest" or a run directory), skipping its measured cells;
    `isolate=False` runs cells in this process, without timeouts (for debugging); `note`
    is printed once the run directory is settled (the auto device's fallback). `jobs`,
    `gpus`, `launcher` and `launcher_options`: see the module docstring.
    """
    console = console or Console(stderr=True)
    cells = expand(suite, method=method) if cells is None else cells
    check_scale_out(method, jobs=jobs, gpus=gpus, launcher=launcher, isolate=isolate)
    if launcher == "submitit":
        from .launchers import check_options

        check_options(launcher_options or {})
    store = open_store(out, suite.name, resume)
    with store.lock():
        if resume is not None:
            check_resume(store, suite.name, method, cells)
            repaired = store.repair()
            if repaired:
                console.print(escape(repaired), highlight=False)
            measured = store.measured_keys()
            if all(c.key in measured for c in cells):
                done = f"nothing to resume: all {len(cells)} cell(s) are in {store.dir}"
                console.print(escape(done), highlight=False, soft_wrap=True)
                return RunSummary(store, [], len(cells))  # and no invocation recorded
        if note:
            console.print(note)
        store.write_manifest(
            {
                "suite": suite.name,
                "method": method,
                "command": command,
                "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "cells": len(cells),
                "launcher": launcher,
                "jobs": jobs,
                "gpus": gpus,
            }
        )
        console.print(f"{suite.name}: {len(cells)} cell(s), method {method}, writing {store.dir}")
        if launcher == "submitit":
            from .launchers import run_cells_submitit

            return run_cells_submitit(
                cells,
                store,
                resume=resume is not None,
                thop=thop,
                console=console,
                options=launcher_options or {},
            )
        return run_cells(
            cells,
            store,
            isolate=isolate,
            resume=resume is not None,
            memory_snapshot=memory_snapshot,
            thop=thop,
            console=console,
            jobs=jobs,
            gpus=gpus,
        )


LAUNCHERS = ("local", "submitit")


def check_scale_out(
    method: str, *, jobs: int, gpus: list[str] | None, launcher: str, isolate: bool
) -> None:
    """Refuse a fan-out that does not fit the method or the launcher (a UsageError)."""
    if launcher not in LAUNCHERS:
        raise UsageError(f"--launcher {launcher!r} is invalid; valid: {', '.join(LAUNCHERS)}")
    if jobs < 1:
        raise UsageError(f"--jobs {jobs} is invalid; valid: an integer >= 1")
    if jobs > 1 and method == "cuda":
        raise UsageError(
            "--jobs applies to the GPU-free methods (estimate, cpu); for cuda give --gpus "
            "(one worker per card)"
        )
    if gpus is not None and method != "cuda":
        raise UsageError(f"--gpus applies to --device cuda, not {method}; use --jobs N")
    if gpus is not None and jobs > 1:
        raise UsageError("--gpus and --jobs are exclusive: --gpus starts one worker per card")
    if (jobs > 1 or gpus) and not isolate:
        raise UsageError("--jobs and --gpus run cells in workers; drop --no-isolate")
    if launcher == "submitit" and (jobs > 1 or gpus):
        raise UsageError(
            "--launcher submitit schedules its own jobs: use --array-parallelism and "
            "--slurm-gpus-per-task instead of --jobs and --gpus"
        )


def resolve_gpus(value: str) -> list[str]:
    """`--gpus`: "all" (every visible card) or comma-separated card indices, as strings for
    CUDA_VISIBLE_DEVICES. No card visible for "all" is a UsageError."""
    if value.strip() == "all":
        import torch

        count = torch.cuda.device_count()  # NVML where it can: no CUDA context here
        if count == 0:
            raise UsageError("--gpus all: no CUDA GPU is visible; valid: all, or card indices")
        return [str(i) for i in range(count)]
    cards = [v.strip() for v in value.split(",") if v.strip()]
    if not cards or not all(c.isdigit() for c in cards) or len(set(cards)) != len(cards):
        raise UsageError(
            f"--gpus {value!r} is invalid; valid: all, or distinct card indices such as 0,1"
        )
    return cards


def run_cells(
    cells: list[Cell],
    store: RunStore,
    *,
    isolate: bool,
    resume: bool = False,
    memory_snapshot: bool = False,
    thop: bool = True,
    console: Console | None = None,
    jobs: int = 1,
    gpus: list[str] | None = None,
) -> RunSummary:
    """Measure each cell and append its record as soon as it is measured.

    The caller holds `store.lock()` (`run_suite` does). Each model's parameters and MACs are
    counted once per (model, variant, resolution), by the launch of its first cell. With
    `jobs` > 1 or `gpus`, that many worker pools take cells from one queue (see
    `_run_parallel`).
    """
    if jobs > 1 or gpus:
        return _run_parallel(
            cells,
            store,
            resume=resume,
            memory_snapshot=memory_snapshot,
            thop=thop,
            console=console or Console(stderr=True),
            slots=[{"CUDA_VISIBLE_DEVICES": g} for g in gpus] if gpus else cpu_slots(jobs),
        )
    console = console or Console(stderr=True)
    todo, skipped = pending_cells(cells, store, resume, console)
    # Snapshots are numbered by the record they belong to, counting the records earlier
    # invocations stored: a resumed run never overwrites an earlier snapshot.
    stored = len(store.rows())
    counted: dict[tuple, Counts] = {}
    records: list[Record] = []
    launch = run_isolated if isolate else run_inline
    interrupted = False
    with CellProgress(console, total=len(todo), title=store.dir.parent.name) as progress:
        try:
            for cell in todo:
                progress.start(cell)
                snapshot = None
                if memory_snapshot and get_method(cell.method).records_snapshots:
                    snapshot = store.dir / f"snapshot-{stored + len(records):04d}.pickle"
                model = (cell.model, cell.variant, cell.resolution)
                outcome = budget_outcome(cell, launch, counts=model not in counted, thop=thop)
                if outcome is None:
                    outcome = launch(cell, snapshot, counts=model not in counted, thop=thop)
                if outcome.counts is not None:
                    counted[model] = outcome.counts
                record = record_of(cell, outcome, counted.get(model))
                store.append(record)
                records.append(record)
                progress.done(record)
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        console.print(
            f"[red]interrupted[/]: {len(records)} cell(s) saved in {store.dir}; "
            "continue with --resume"
        )
    return RunSummary(store, records, skipped, interrupted)


def pending_cells(
    cells: list[Cell], store: RunStore, resume: bool, console: Console
) -> tuple[list[Cell], int]:
    """The cells still to measure (all of them unless resuming) and how many were skipped;
    a resumed run says so. Shared by every launcher."""
    done = store.measured_keys() if resume else set()
    todo = [c for c in cells if c.key not in done]
    skipped = len(cells) - len(todo)
    if skipped:
        console.print(
            f"resuming {store.dir}: {skipped} cell(s) already measured, {len(todo)} to go"
        )
    return todo, skipped


def record_of(cell: Cell, outcome: Outcome, counts: Counts | None) -> Record:
    """The row of a launched cell: its outcome and its model's counts."""
    return Record.for_cell(
        cell,
        status=outcome.status,
        message=outcome.message,
        counts=counts,
        measurement=outcome.measurement,
    )


def budget_outcome(cell: Cell, launch, **kwargs) -> Outcome | None:
    """The outcome of a cell with a budget that is not to be run: `skipped` when the
    estimator predicts a peak above the budget, the estimate itself for an estimate cell.
    None when the cell is to be run (it fits, or the estimator could not tell)."""
    if cell.budget_bytes is None:
        return None
    estimate = cell.method == "estimate"
    predicted = launch(replace(cell, method="estimate"), None, **(kwargs if estimate else {}))
    peak = predicted.measurement.peak_bytes
    if predicted.status == status.OK and peak is not None and peak > cell.limit_bytes:
        message = f"over budget: estimated peak {peak / 1e9:.2f} GB > "
        message += f"{cell.limit_bytes / 1e9:.2f} GB ({bytes_label(cell.budget_bytes)})"
        return Outcome(status.SKIPPED, message, counts=predicted.counts)
    return predicted if estimate else None


def cpu_slots(jobs: int) -> list[dict[str, str]]:
    """The environments of `jobs` CPU workers: each gets its share of the cores as torch's
    thread count, so N workers computing at once (the cpu method, a detector's real CPU
    step) do not run N x cores threads. A thread count the user set is kept."""
    if "OMP_NUM_THREADS" in os.environ:
        return [{}] * jobs
    threads = max(1, (os.cpu_count() or 1) // jobs)
    return [{"OMP_NUM_THREADS": str(threads)}] * jobs


def _run_parallel(
    cells: list[Cell],
    store: RunStore,
    *,
    resume: bool,
    memory_snapshot: bool,
    thop: bool,
    console: Console,
    slots: list[dict[str, str]],
) -> RunSummary:
    """`run_cells` with one thread per slot, each driving its own `WorkerPool` (a slot's
    environment: a pinned card for --gpus, nothing for --jobs) and taking cells from one
    queue. The threads only wait on their workers; records are built and appended under one
    lock in this process, so no row is lost or written twice, and the progress bar sees
    every cell. Ctrl-C kills every worker and saves what finished.
    """
    todo, skipped = pending_cells(cells, store, resume, console)
    stored = len(store.rows())
    pools = [WorkerPool(env) for env in slots]
    pending: queue.Queue[Cell] = queue.Queue()
    for cell in todo:
        pending.put(cell)
    counted: dict[tuple, Counts] = {}
    records: list[Record] = []
    served = [0] * len(slots)
    taken = [0]  # cells handed out so far
    guard = threading.Lock()
    stop = threading.Event()
    failures: list[BaseException] = []
    progress = CellProgress(console, total=len(todo), title=store.dir.parent.name)

    def serve(slot: int) -> None:
        pool = pools[slot]
        launch = pool.run
        while not stop.is_set():
            try:
                cell = pending.get_nowait()
            except queue.Empty:
                return
            model = (cell.model, cell.variant, cell.resolution)
            with guard:
                # A model is counted until one of its launches has returned counts; two
                # slots may count it at once (counts are deterministic: the same figures).
                counts = model not in counted
                snapshot = None
                if memory_snapshot and get_method(cell.method).records_snapshots:
                    # numbered in the order cells are taken: unique across slots
                    snapshot = store.dir / f"snapshot-{stored + taken[0]:04d}.pickle"
                taken[0] += 1
            try:
                outcome = budget_outcome(cell, launch, counts=counts, thop=thop)
                if outcome is None:
                    outcome = launch(cell, snapshot, counts=counts, thop=thop)
            except BaseException as exc:  # a worker that could not start: the run stops
                if not stop.is_set():
                    failures.append(exc)
                    stop.set()
                return
            if stop.is_set():  # interrupted: the cell's worker was killed, not the cell
                return
            with guard:
                if outcome.counts is not None:
                    counted.setdefault(model, outcome.counts)
                record = record_of(cell, outcome, counted.get(model))
                store.append(record)
                records.append(record)
                served[slot] += 1
                progress.done(record, where=f"worker {slot}")

    threads = [
        threading.Thread(target=serve, args=(slot,), daemon=True, name=f"revbench-slot-{slot}")
        for slot in range(len(slots))
    ]
    interrupted = False
    with progress:
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():
                    thread.join(timeout=0.5)
        except KeyboardInterrupt:
            interrupted = True
            stop.set()
        finally:
            stop.set()
            for pool in pools:
                pool.close()
            for thread in threads:
                thread.join(timeout=15)
    store.update_invocation(
        workers=[
            {
                "worker": slot,
                "host": socket.gethostname(),
                "gpu": env.get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES")),
                "cells": served[slot],
            }
            for slot, env in enumerate(slots)
        ]
    )
    if failures:
        raise failures[0]
    if interrupted:
        console.print(
            f"[red]interrupted[/]: {len(records)} cell(s) saved in {store.dir}; "
            "continue with --resume"
        )
    return RunSummary(store, records, skipped, interrupted)
