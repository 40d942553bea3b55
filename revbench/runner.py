"""Running a list of cells into a run directory: progress, resume, counts, summary."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .cell import Cell
from .counting import count_macs, count_macs_thop, count_params
from .launcher import run_inline, run_isolated
from .results import Record, RunStore

log = logging.getLogger(__name__)

STATUS_STYLE = {"ok": "green", "oom": "yellow", "timeout": "red", "error": "red"}


@dataclass
class RunSummary:
    store: RunStore
    records: list[Record]
    skipped: int
    interrupted: bool = False


class Counter:
    """Parameters and MACs per (model, variant, resolution), computed once per run.

    Params and flop-counter MACs come from the meta device (free for any size); thop
    needs a real forward on the CPU and is skipped with `thop=False`.
    """

    def __init__(self, thop: bool = True):
        self.thop = thop
        self._cache: dict[tuple, dict] = {}

    def __call__(self, cell: Cell) -> dict:
        key = (cell.model, cell.variant, cell.resolution)
        if key not in self._cache:
            self._cache[key] = self._count(cell)
        return self._cache[key]

    def _count(self, cell: Cell) -> dict:
        counts: dict = {"params": None, "macs": None, "macs_thop": None}
        try:
            with torch.device("meta"):
                model = cell.build_model()
            counts["params"] = count_params(model)
            counts["macs"] = count_macs(model, cell.resolution)
        except Exception as exc:  # counts are extras; a model that cannot run on meta still runs
            log.warning("could not count %s on the meta device: %s", cell.model, exc)
        if self.thop:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    counts["macs_thop"] = count_macs_thop(cell.build_model(), cell.resolution)
            except Exception as exc:
                log.warning("thop could not count %s: %s", cell.model, exc)
        return counts


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
                snapshot = (
                    store.dir / f"snapshot-{len(records):04d}.pickle"
                    if memory_snapshot and cell.method == "cuda"
                    else None
                )
                outcome = launch(cell, snapshot)
                record = Record.for_cell(
                    cell,
                    status=outcome.status,
                    message=outcome.message,
                    **counter(cell),
                    **outcome.values,
                )
                store.append(record)
                records.append(record)
                style = STATUS_STYLE.get(record.status, "red")
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


def summary_table(records: list[Record]) -> Table:
    table = Table(title="revbench results", show_lines=False)
    for col in (
        "model",
        "mode",
        "res",
        "batch",
        "prec",
        "status",
        "peak MB",
        "ms/step",
        "samples/s",
        "params M",
        "GMACs",
    ):
        table.add_column(
            col, justify="left" if col in ("model", "mode", "status", "prec") else "right"
        )
    for r in records:
        label = r.model + (f"[{r.variant}]" if r.variant else "")
        table.add_row(
            escape(label),
            r.mode,
            str(r.resolution),
            str(r.batch_size),
            r.precision,
            r.status,
            _fmt(r.peak_bytes, 1e6, ".1f"),
            _fmt(r.step_time_ms_median, 1, ".1f"),
            _fmt(r.throughput_samples_per_s, 1, ".1f"),
            _fmt(r.params, 1e6, ".2f"),
            _fmt(r.macs, 1e9, ".2f"),
        )
    return table


def _fmt(value, scale: float, spec: str) -> str:
    return "-" if value is None else format(value / scale, spec)


def default_out() -> Path:
    return Path("results")
