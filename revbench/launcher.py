"""Launchers: where and how many cells run at once. Each answers `launch(request, slot)`
with an `Outcome`, never raising for a failed cell.

- `InlineLauncher`: in this process, without timeouts (`--no-isolate`, for debugging).
- `PoolLauncher`: worker processes under each cell's timeout (`revbench.worker`), one
  `WorkerPool` per slot: one slot by default, `--jobs N` slots for the GPU-free methods
  (each with its share of the cores), one slot per card for `--gpus` (pinned with
  CUDA_VISIBLE_DEVICES). Whether a worker serves cell after cell or only one (cuda: a
  fresh allocator) is the method's policy, applied by the pool.
- `revbench.submitit_launcher.SubmititLauncher`: a job array; each job runs the same task
  in its own process on the inline launcher.

What a run does with a cell is a task (`measure_task` for `revbench run`; a max-batch
search launches many probe cells): a function of the cell and a `Slot`, the handle through
which it launches cells, returning the cell's record. `Launcher.run_all` runs a task over
cells on every slot at once and yields each finished record; `revbench.runner.run_cells`,
the one run loop, stores them.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import status
from .cell import Cell, bytes_label, readable_bytes
from .estimate_cache import EstimateCache
from .execute import run_inline
from .measurement import Counts
from .methods import get_method
from .outcome import Outcome, Request
from .records import Record
from .suite import counts_key
from .worker import Worker, WorkerPool, cpu_slots, run_isolated, shared_pool  # noqa: F401

# ------------------------------------------------------------------ what a task is given


@dataclass
class RunContext:
    """What every slot of one run shares: which models are counted (each once, by the
    first launch of its cell that returns counts), snapshot numbering, and the run's
    launch options."""

    thop: bool = True
    snapshots_in: Path | None = None  # --memory-snapshot: the run directory
    snapshots_before: int = 0  # records earlier invocations stored: numbering goes on
    on_start: Callable[[Cell, int], None] | None = None  # a slot took a cell
    cache: EstimateCache | None = None  # estimate cells answered from, and kept in, it
    counted: dict[tuple, Counts] = field(default_factory=dict)  # by `counts_key`
    _taken: int = 0
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def request(self, cell: Cell, *, count: bool, snapshot: bool) -> Request:
        """The request for `cell`: counted when asked and its model not yet counted; with a
        snapshot file, numbered in the order cells are taken (unique across slots), when
        asked and its method records snapshots."""
        with self._guard:
            counts = count and counts_key(cell) not in self.counted
            path = None
            if snapshot and self.snapshots_in and get_method(cell.method).records_snapshots:
                number = self.snapshots_before + self._taken
                path = self.snapshots_in / f"snapshot-{number:04d}.pickle"
            if snapshot:
                self._taken += 1
        return Request(cell, path, counts, self.thop)

    def took(self, cell: Cell, outcome: Outcome) -> None:
        if outcome.counts is not None:
            with self._guard:
                self.counted.setdefault(counts_key(cell), outcome.counts)

    def counts(self, cell: Cell) -> Counts | None:
        return self.counted.get(counts_key(cell))

    def cached(self, cell: Cell, *, count: bool) -> Outcome | None:
        """An estimate cell's outcome from the cache, counts included when it is to count
        its model; None when the cache lacks either (then the cell is launched)."""
        if self.cache is None or cell.method != "estimate":
            return None
        measurement = self.cache.get_measurement(cell)
        if measurement is None:
            return None
        counts = None
        if count and counts_key(cell) not in self.counted:
            counts = self.cache.get_counts(cell, self.thop)
            if counts is None:
                return None
        with self._guard:
            self.cache.hits += 1
        return Outcome(status.OK, measurement=measurement, counts=counts, cached=True)

    def remember(self, request: Request, outcome: Outcome) -> None:
        """Keep a measured estimate (and its model's counts, when they were all taken)."""
        cell = request.cell
        if self.cache is None or cell.method != "estimate" or outcome.status != status.OK:
            return
        self.cache.put_measurement(cell, outcome.measurement)
        # Counts whose model was built are kept as they are: a counter that cannot count a
        # model (thop on some layers) fails the same way every time. A worker that died or
        # timed out while counting returns no parameters: not kept.
        counts = outcome.counts
        if request.counts and counts is not None and counts.params is not None:
            self.cache.put_counts(cell, request.thop, counts)


@dataclass
class Slot:
    """A task's handle on one slot of a launcher."""

    launcher: Launcher
    index: int
    context: RunContext

    def launch(self, cell: Cell, *, count: bool = True, snapshot: bool = False) -> Outcome:
        """Launch `cell` on this slot; its model is counted by this launch unless it
        already is (or `count` is False)."""
        outcome = self.context.cached(cell, count=count)
        if outcome is None:
            request = self.context.request(cell, count=count, snapshot=snapshot)
            outcome = self.launcher.launch(request, self.index)
            self.context.remember(request, outcome)
        self.context.took(cell, outcome)
        return outcome

    def counts(self, cell: Cell) -> Counts | None:
        return self.context.counts(cell)


Task = Callable[[Cell, Slot], Record]


@dataclass(frozen=True)
class Finished:
    """A cell whose task ended: its record, the slot that ran it, and whether the record
    is already in the store (a submitit job appends its own)."""

    cell: Cell
    record: Record
    slot: int = 0
    stored: bool = False


# --------------------------------------------------------------------------- the task


def budget_outcome(cell: Cell, slot: Slot) -> Outcome | None:
    """The outcome of a cell with a budget that is not to be run: `skipped` when the
    estimator predicts a peak above the budget, the estimate itself for an estimate cell.
    None when the cell is to be run (it fits, or the estimator could not tell)."""
    if cell.budget_bytes is None:
        return None
    estimate = cell.method == "estimate"
    predicted = slot.launch(replace(cell, method="estimate"), count=estimate)
    peak = predicted.measurement.peak_bytes
    if predicted.status == status.OK and peak is not None and peak > cell.limit_bytes:
        message = f"over budget: estimated peak {readable_bytes(peak)} > "
        message += f"{readable_bytes(cell.limit_bytes)} ({bytes_label(cell.budget_bytes)})"
        return Outcome(status.SKIPPED, message, counts=predicted.counts)
    return predicted if estimate else None


def record_of(cell: Cell, outcome: Outcome, counts: Counts | None) -> Record:
    """The row of a launched cell: its outcome and its model's counts."""
    return Record.for_cell(
        cell,
        status=outcome.status,
        message=outcome.message,
        counts=counts,
        measurement=outcome.measurement,
        from_cache=outcome.cached,
    )


def measure_task(cell: Cell, slot: Slot) -> Record:
    """`revbench run`'s task: the cell measured (or skipped by its budget), its record."""
    outcome = budget_outcome(cell, slot)
    if outcome is None:
        outcome = slot.launch(cell, snapshot=True)
    return record_of(cell, outcome, slot.counts(cell))


# -------------------------------------------------------------------------- launchers


class Launcher:
    """Runs requests on `slots` slots. Subclasses define `launch`; `run_all` schedules a
    task over cells on every slot and yields each finished record in completion order."""

    name = "local"
    slots = 1

    def launch(self, request: Request, slot: int = 0) -> Outcome:
        raise NotImplementedError

    def close(self) -> None:
        """Stop every worker, idle or running a cell."""

    def manifest_fields(self, served: list[int]) -> dict:
        """What the run's manifest records of the slots that ran, given the cells each
        served (nothing for a single local slot)."""
        return {}

    def interrupted_message(self, saved: int, run_dir: Path) -> str:
        return f"[red]interrupted[/]: {saved} cell(s) saved in {run_dir}; continue with --resume"

    def run_all(self, cells: list[Cell], task: Task, context: RunContext) -> Iterator[Finished]:
        if self.slots == 1:
            yield from self._run_serially(cells, task, context)
        else:
            yield from self._run_on_slots(cells, task, context)

    def _run_serially(self, cells, task, context) -> Iterator[Finished]:
        slot = Slot(self, 0, context)
        try:
            for cell in cells:
                if context.on_start:
                    context.on_start(cell, 0)
                yield Finished(cell, task(cell, slot))
        finally:
            self.close()

    def _run_on_slots(self, cells, task, context) -> Iterator[Finished]:
        """One thread per slot, each taking the next cell and waiting on its worker;
        records reach the caller's thread through one queue, so the caller stores them and
        nothing is written twice. Closing the generator (Ctrl-C in the caller) kills every
        worker."""
        pending = list(cells)
        guard = threading.Lock()
        stop = threading.Event()
        done: queue.Queue = queue.Queue()

        # The estimator answers a model's other batch sizes from the traces of its first
        # (revbench.methods.estimate): there a model's cells stay on the slot that took its
        # first, and a slot with no model of its own left to take is done. Real runs
        # (cpu, cuda) spread every cell over every slot.
        keep_models = bool(cells) and get_method(cells[0].method).batches_share_work
        held: dict[int, Cell] = {}  # the cell each slot took last: its model is the slot's

        def take(index: int) -> Cell | None:
            with guard:
                if not pending or stop.is_set():
                    return None
                if not keep_models:
                    return pending.pop(0)
                mine = held[index].batchless_key if index in held else None
                elsewhere = [c for slot, c in held.items() if slot != index]
                others = {c.batchless_key for c in elsewhere}
                i = next((i for i, c in enumerate(pending) if c.batchless_key == mine), None)
                if i is None:
                    free = [i for i, c in enumerate(pending) if c.batchless_key not in others]
                    # A model's configurations share its counts (`counts_key`): one whose
                    # model another slot may be counting now waits behind the rest, or two
                    # slots count the same model at once (RevBiFPN-S0: 3 s each).
                    counting = {counts_key(c) for c in elsewhere}
                    counting = {key for key in counting if key not in context.counted}
                    i = next(
                        (i for i in free if counts_key(pending[i]) not in counting),
                        free[0] if free else None,
                    )
                if i is None:  # every cell left is another slot's model's
                    return None
                cell = pending.pop(i)
                held[index] = cell
                return cell

        def serve(index: int) -> None:
            slot = Slot(self, index, context)
            try:
                while (cell := take(index)) is not None:
                    record = task(cell, slot)
                    if stop.is_set():  # interrupted: the cell's worker was killed, not the cell
                        return
                    done.put(Finished(cell, record, index))
            except BaseException as exc:  # a worker that could not start: the run stops
                done.put(exc)
            finally:
                done.put(index)  # this slot is finished

        threads = [
            threading.Thread(target=serve, args=(i,), daemon=True, name=f"revbench-slot-{i}")
            for i in range(self.slots)
        ]
        running = len(threads)
        failure: BaseException | None = None
        try:
            for thread in threads:
                thread.start()
            while running:
                item = done.get()
                if isinstance(item, int):
                    running -= 1
                elif isinstance(item, BaseException):
                    if failure is None:
                        failure = item
                        stop.set()
                else:
                    yield item
        finally:
            stop.set()
            self.close()
            for thread in threads:
                thread.join(timeout=15)
        if failure is not None:
            raise failure


class InlineLauncher(Launcher):
    """Cells in this process, without timeouts: a crashing cell takes the run down."""

    def launch(self, request: Request, slot: int = 0) -> Outcome:
        return run_inline(
            request.cell, request.snapshot_path, counts=request.counts, thop=request.thop
        )


class PoolLauncher(Launcher):
    """Cells in worker processes under their timeouts, `len(envs)` at once: one
    `WorkerPool` per slot, its workers started with the slot's environment on top of ours."""

    def __init__(self, envs: list[dict[str, str]], shared: bool = False) -> None:
        self.envs = envs
        self.slots = len(envs)
        # One slot reuses the process's warm pool (one interpreter start per process, not
        # per run); several get their own, closed when the run ends.
        self._shared = shared and self.slots == 1 and not envs[0]
        self._pools: list[WorkerPool] | None = None

    def _pool(self, slot: int) -> WorkerPool:
        if self._shared:
            return shared_pool()
        if self._pools is None:
            self._pools = [WorkerPool(env) for env in self.envs]
        return self._pools[slot]

    def launch(self, request: Request, slot: int = 0) -> Outcome:
        return self._pool(slot).run(
            request.cell, request.snapshot_path, counts=request.counts, thop=request.thop
        )

    def close(self) -> None:
        if self._pools is not None:
            for pool in self._pools:
                pool.close()

    def manifest_fields(self, served: list[int]) -> dict:
        if self.slots == 1:
            return {}
        return {
            "workers": [
                {
                    "worker": slot,
                    "host": socket.gethostname(),
                    "gpu": env.get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES")),
                    "cells": served[slot],
                }
                for slot, env in enumerate(self.envs)
            ]
        }


def gpu_slots(gpus: list[str]) -> list[dict[str, str]]:
    """One worker per card, pinned to it."""
    return [{"CUDA_VISIBLE_DEVICES": g} for g in gpus]
