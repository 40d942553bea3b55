"""Running a suite's cells into a run directory: progress, resume, counts, snapshots.

`run_suite` is the function behind `revbench run` and `revbench gate --suite`: it opens
(or resumes) a run directory, records the invocation in its manifest and measures every
cell, appending each record as soon as it is measured.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import status
from .cell import Cell
from .counting import count_macs, count_macs_thop, count_params
from .errors import UsageError
from .launcher import run_inline, run_isolated
from .measurement import Counts
from .methods import get_method
from .results import Record, RunStore
from .scenario import build_model
from .suite import Suite, expand

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    store: RunStore
    records: list[Record]  # the records this invocation wrote
    skipped: int  # cells already measured by an earlier invocation (--resume)
    interrupted: bool = False


class Counter:
    """Parameters and MACs per (model, variant, resolution), computed once per run.

    Params and flop-counter MACs come from the meta device (free for any size); thop
    needs a real forward on the CPU and is skipped with `thop=False`.
    """

    def __init__(self, thop: bool = True):
        self.thop = thop
        self._cache: dict[tuple, Counts] = {}

    def __call__(self, cell: Cell) -> Counts:
        key = (cell.model, cell.variant, cell.resolution)
        if key not in self._cache:
            self._cache[key] = self._count(cell)
        return self._cache[key]

    def _count(self, cell: Cell) -> Counts:
        params = macs = macs_thop = None
        try:
            with torch.device("meta"):
                model = build_model(cell)
            params = count_params(model)
            macs = count_macs(model, cell.resolution)
        except Exception as exc:  # counts are extras; a model that cannot run on meta still runs
            log.warning("could not count %s on the meta device: %s", cell.model, exc)
        if self.thop:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    macs_thop = count_macs_thop(build_model(cell), cell.resolution)
            except Exception as exc:
                log.warning("thop could not count %s: %s", cell.model, exc)
        return Counts(params=params, macs=macs, macs_thop=macs_thop)


def open_store(out: str | Path, suite: str, resume: str | Path | None = None) -> RunStore:
    """A new run directory under out/suite/, or the one to resume: "latest" or a path.

    Checked before anything is written: nothing to resume is a UsageError.
    """
    if resume is None:
        return RunStore.create(Path(out), suite)
    latest = str(resume) == "latest"
    store = RunStore.latest(Path(out), suite) if latest else RunStore(Path(resume))
    if store is None or not store.manifest_path.is_file():
        where = Path(out) / suite if latest else resume
        raise UsageError(f"nothing to resume at {where}: no run directory with a manifest.json")
    return store


def run_suite(
    suite: Suite,
    *,
    method: str,
    cells: list[Cell] | None = None,
    out: str | Path = "results",
    resume: str | Path | None = None,
    isolate: bool | None = None,
    memory_snapshot: bool = False,
    thop: bool = True,
    command: str = "",
    note: str | None = None,
    console: Console | None = None,
) -> RunSummary:
    """Measure `cells` (default: every cell of `suite`) into a run directory under `out`.

    `resume` continues a run ("latest" or a run directory), skipping its measured cells;
    `isolate` runs one subprocess per cell (default: the method's own default); `note`
    is printed once the run directory is settled (the auto device's fallback).
    """
    console = console or Console(stderr=True)
    cells = expand(suite, method=method) if cells is None else cells
    store = open_store(out, suite.name, resume)
    if note:
        console.print(note)
    store.write_manifest(
        {
            "suite": suite.name,
            "method": method,
            "command": command,
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "cells": len(cells),
        }
    )
    console.print(f"{suite.name}: {len(cells)} cell(s), method {method}, writing {store.dir}")
    return run_cells(
        cells,
        store,
        isolate=get_method(method).isolated_by_default if isolate is None else isolate,
        resume=resume is not None,
        memory_snapshot=memory_snapshot,
        thop=thop,
        console=console,
    )


def run_cells(
    cells: list[Cell],
    store: RunStore,
    *,
    isolate: bool,
    resume: bool = False,
    memory_snapshot: bool = False,
    thop: bool = True,
    console: Console | None = None,
) -> RunSummary:
    """Measure each cell and append its record as soon as it is measured."""
    console = console or Console(stderr=True)
    done = store.measured_keys() if resume else set()
    todo = [c for c in cells if c.key not in done]
    skipped = len(cells) - len(todo)
    if skipped:
        console.print(
            f"resuming {store.dir}: {skipped} cell(s) already measured, {len(todo)} to go"
        )
    # Snapshots are numbered by the record they belong to, counting the records earlier
    # invocations stored: a resumed run never overwrites an earlier snapshot.
    stored = len(store.rows())
    counter = Counter(thop=thop)
    records: list[Record] = []
    launch = run_isolated if isolate else run_inline
    interrupted = False
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[cell]}"),
        console=console,
        transient=False,
    )
    with progress:
        task = progress.add_task(store.dir.parent.name, total=len(todo), cell="")
        try:
            for cell in todo:
                progress.update(task, cell=escape(cell.label()))
                snapshot = None
                if memory_snapshot and get_method(cell.method).records_snapshots:
                    snapshot = store.dir / f"snapshot-{stored + len(records):04d}.pickle"
                outcome = launch(cell, snapshot)
                record = Record.for_cell(
                    cell,
                    status=outcome.status,
                    message=outcome.message,
                    counts=counter(cell),
                    measurement=outcome.measurement,
                )
                store.append(record)
                records.append(record)
                style = status.STYLE.get(record.status, "red")
                # Labels and messages carry brackets ("[depth=4]"): not rich markup.
                note = f" ({record.message})" if record.message else ""
                progress.console.print(
                    f"[{style}]{record.status:>7}[/] " + escape(cell.label() + note)
                )
                progress.advance(task)
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        console.print(
            f"[red]interrupted[/]: {len(records)} cell(s) saved in {store.dir}; "
            "continue with --resume"
        )
    return RunSummary(store, records, skipped, interrupted)
