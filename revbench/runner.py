"""The run loop: cells into a run directory, whoever launches them.

`run_suite` is the function behind `revbench run`, `revbench gate --suite` and
`revbench max-batch`: it opens (or resumes) a run directory, holds its lock, records the
invocation in its manifest and hands the cells to `run_cells`, the one loop, which skips
what an earlier invocation measured, runs a task (`launcher.measure_task`, or a max-batch
search) over the rest on the run's launcher (`RunConfig.launcher()`), appends each record
as soon as it is finished and reports progress. However cells run, every record goes
through `RunStore.append`.

What each ending leaves behind: a finished cell is a record on disk (flushed, fsynced); a
failed, crashed, hung or out-of-memory cell is a record with its status; Ctrl-C or a kill
loses only the cell in flight (at most a torn last line, repaired by the next --resume);
a killed parent takes its workers with it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from . import status
from .cell import KEY_FIELDS, Cell
from .errors import UsageError
from .estimate_cache import EstimateCache, default_root
from .eta import Eta
from .jobs import AUTO, auto_jobs, default_jobs, parse_jobs
from .launcher import (
    InlineLauncher,
    Launcher,
    PoolLauncher,
    RunContext,
    Task,
    cpu_slots,
    gpu_slots,
    measure_task,
)
from .methods import get_method
from .methods.cuda_terms import card_terms
from .methods.estimate_method import on_real_tensors
from .outputs import check_output_dir
from .progress import CellProgress
from .records import Record
from .store import RunStore
from .submitit_launcher import SubmititLauncher, active_jobs, cancel, check_options
from .suite import Suite, model_facts


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


LAUNCHERS = ("local", "submitit")


@dataclass(frozen=True)
class RunConfig:
    """How a run measures its cells, checked when made: a combination that cannot run is a
    UsageError here, before anything is written.

    `resume` continues a run ("latest" or a run directory), skipping its measured cells;
    `isolate=False` runs cells in this process, without timeouts (for debugging); `note`
    is printed once the run directory is settled (the auto device's fallback). `jobs` CPU
    workers (GPU-free methods) or one worker per card of `gpus` share the cells, each in a
    worker under its timeout; `launcher="submitit"` hands them to submitit as a job array
    (`launcher_options`: its --slurm-* settings).
    """

    method: str
    out: str | Path = "results"
    resume: str | Path | None = None
    isolate: bool = True
    memory_snapshot: bool = False
    thop: bool = True
    command: str = ""
    note: str | None = None
    # an integer, "auto" (revbench.jobs: one worker per core that memory holds), or None:
    # auto for the estimator on local workers, else 1
    jobs: int | str | None = None
    gpus: list[str] | None = None
    launcher: str = "local"
    launcher_options: dict = field(default_factory=dict)
    # estimate cells answered from, and kept in, the estimate cache (revbench.estimate_cache);
    # `revbench run --no-cache` and the gate turn it off
    cache: bool = False
    # --resume of a run whose earlier submitit jobs are still queued or running: cancel
    # them and measure their cells now (without it, such a resume is refused)
    cancel_pending: bool = False

    def __post_init__(self) -> None:
        method, gpus, launcher, isolate = self.method, self.gpus, self.launcher, self.isolate
        jobs = parse_jobs(self.jobs)
        if jobs is None:
            jobs = default_jobs(method, local=launcher == "local" and isolate and gpus is None)
        object.__setattr__(self, "jobs", jobs)
        many = jobs == AUTO or jobs > 1
        if launcher not in LAUNCHERS:
            raise UsageError(f"--launcher {launcher!r} is invalid; valid: {', '.join(LAUNCHERS)}")
        if many and method == "cuda":
            raise UsageError(
                "--jobs applies to the GPU-free methods (estimate, cpu); for cuda give --gpus "
                "(one worker per card)"
            )
        if gpus is not None and method != "cuda":
            raise UsageError(f"--gpus applies to --device cuda, not {method}; use --jobs N")
        if gpus is not None and many:
            raise UsageError("--gpus and --jobs are exclusive: --gpus starts one worker per card")
        if (many or gpus) and not isolate:
            raise UsageError("--jobs and --gpus run cells in workers; drop --no-isolate")
        if launcher == "submitit" and (many or gpus):
            raise UsageError(
                "--launcher submitit schedules its own jobs: use --array-parallelism and "
                "--slurm-gpus-per-task instead of --jobs and --gpus"
            )
        if launcher == "submitit":
            check_options(self.launcher_options)

    def make_launcher(self, store: RunStore, console: Console) -> Launcher:
        if self.launcher == "submitit":
            return SubmititLauncher(store, self.launcher_options, console)
        if not self.isolate:
            return InlineLauncher()
        if self.gpus:
            return PoolLauncher(gpu_slots(self.gpus))
        if self.jobs > 1:
            return PoolLauncher(cpu_slots(self.jobs))
        return PoolLauncher([{}], shared=True)

    def for_cells(self, cells: list[Cell]) -> tuple[RunConfig, str | None]:
        """This config with its workers settled for `cells` (the cells to run): `auto`
        resolved (with a line saying why that many), no more workers than cells."""
        if self.jobs == AUTO:
            jobs, why = auto_jobs(cells)
            return replace(self, jobs=jobs), f"--jobs auto: {jobs} worker(s) ({why})"
        return replace(self, jobs=max(1, min(self.jobs, len(cells)))), None

    def make_context(self, store: RunStore) -> RunContext:
        """What the run's slots share: counting, snapshots, the estimate cache."""
        return RunContext(
            thop=self.thop,
            snapshots_in=store.dir if self.memory_snapshot else None,
            cache=EstimateCache(default_root()) if self.cache else None,
        )

    def manifest(self, suite: str, cells: int) -> dict:
        return {
            "suite": suite,
            "method": self.method,
            "command": self.command,
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "cells": cells,
            "launcher": self.launcher,
            "jobs": self.jobs,
            "gpus": self.gpus,
        }


def run_suite(
    suite: Suite,
    cells: list[Cell],
    config: RunConfig,
    *,
    console: Console | None = None,
    task: Task = measure_task,
    progress=None,
    what: str = "cell(s)",
) -> RunSummary:
    """Run `task` over `cells` into a run directory under `config.out` (see the module);
    `progress` reports each finished cell (default: a `CellProgress` bar and lines)."""
    console = console or Console(stderr=True)
    store = open_store(config.out, suite.name, config.resume)
    with store.lock():
        if config.resume is not None:
            check_resume(store, suite.name, config.method, cells)
            repaired = store.repair()
            if repaired:
                console.print(escape(repaired), highlight=False)
            settle_submitted_jobs(store, config.cancel_pending, console)
            measured = store.measured_keys()
            if all(c.key in measured for c in cells):
                done = f"nothing to resume: all {len(cells)} {what} are in {store.dir}"
                console.print(escape(done), highlight=False, soft_wrap=True)
                return RunSummary(store, [], len(cells))  # and no invocation recorded
        if config.note:
            console.print(config.note)
        measured = store.measured_keys() if config.resume is not None else set()
        config, workers = config.for_cells([c for c in cells if c.key not in measured])
        if workers and config.jobs > 1:
            console.print(escape(workers), highlight=False)
        store.write_manifest(
            {**config.manifest(suite.name, len(cells)), **estimate_terms(cells)},
            model_facts(c.model for c in cells),
        )
        console.print(
            f"{suite.name}: {len(cells)} {what}, method {config.method}, writing {store.dir}"
        )
        launcher = config.make_launcher(store, console)
        return run_cells(
            store,
            cells,
            launcher,
            progress or CellProgress(console, total=0, title=store.dir.parent.name),
            context=config.make_context(store),
            task=task,
            resume=config.resume is not None,
        )


def estimate_terms(cells: list[Cell]) -> dict:
    """The manifest's record of what the run's estimates are for: each card named, with
    the terms modelled and left out (`revbench.methods.cuda_terms.card_terms`)."""
    cards = sorted({c.card for c in cells if c.method == "estimate"})
    if not cards:
        return {}
    return {"cards": {card: card_terms(card) for card in cards}}


def settle_submitted_jobs(store: RunStore, cancel_pending: bool, console: Console) -> None:
    """Never measure a cell twice: jobs of an earlier submitit invocation that have not
    written their row and are still queued or running are refused (a UsageError naming
    them), or cancelled with `cancel_pending`, before anything is launched."""
    active = active_jobs(store)
    if not active:
        return
    ids = ", ".join(str(j["job_id"]) for j in active[:8]) + (", ..." if len(active) > 8 else "")
    if not cancel_pending:
        raise UsageError(
            f"--resume {store.dir}: {len(active)} submitit job(s) of an earlier invocation are "
            f"still queued or running ({ids}) and will write their rows: wait for them, or "
            "give --cancel-pending to cancel them and measure their cells now"
        )
    cancel(active)
    console.print(
        escape(f"cancelled {len(active)} submitit job(s) of an earlier invocation: {ids}")
    )


def run_cells(
    store: RunStore,
    cells: list[Cell],
    launcher: Launcher,
    progress: CellProgress,
    *,
    context: RunContext | None = None,
    task: Task = measure_task,
    resume: bool = False,
) -> RunSummary:
    """The one run loop: skip the cells `store` already holds (when resuming), run `task`
    over the rest on `launcher`, append each record as soon as it is finished, report it
    to `progress`. The caller holds `store.lock()`.

    Ctrl-C stops the launcher (its workers are killed) and keeps every stored record.
    """
    console = progress.console
    context = context or RunContext()
    todo, skipped = pending_cells(cells, store, resume, console)
    # Snapshots are numbered by the record they belong to, counting the records earlier
    # invocations stored: a resumed run never overwrites an earlier snapshot.
    context.snapshots_before = len(store.rows())
    progress.total = len(todo)
    if todo:
        shares_work = get_method(todo[0].method).batches_share_work
        progress.eta = Eta(todo, shares_work, on_real_tensors, workers=launcher.slots)
        if shares_work and launcher.slots > 1:  # slots keep their model: the big ones first
            todo = progress.eta.costliest_first(todo)
    context.on_start = lambda cell, slot: progress.start(cell)
    records: list[Record] = []
    served = [0] * launcher.slots
    interrupted = False
    with progress, contextlib.closing(launcher.run_all(todo, task, context)) as finished:
        try:
            for done in finished:
                if not done.stored:
                    store.append(done.record)
                records.append(done.record)
                served[done.slot] += 1
                where = f"worker {done.slot}" if launcher.slots > 1 else ""
                progress.done(done.record, where=where)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            fields = launcher.manifest_fields(served)
            if fields:
                store.update_invocation(**fields)
    cache = context.cache
    if cache is not None:
        for notice in dict.fromkeys(cache.notices):
            console.print(escape(notice), highlight=False, soft_wrap=True)
        if cache.hits:
            console.print(
                escape(
                    f"{cache.hits} of {len(records)} cell(s) from the estimate cache "
                    f"({cache.root}; --no-cache measures them again)"
                ),
                highlight=False,
                soft_wrap=True,
            )
    if interrupted:
        console.print(launcher.interrupted_message(len(records), store.dir))
    return RunSummary(store, records, skipped, interrupted)


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
