"""Launchers for tests: a plain function standing in for a worker, and the run loop
called the way `revbench run` calls it."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from revbench.launcher import Launcher, RunContext, Slot
from revbench.progress import CellProgress
from revbench.runner import RunConfig, run_cells


class FunctionLauncher(Launcher):
    """Answers every request with `fn(cell, snapshot_path, counts=..., thop=...)`."""

    def __init__(self, fn):
        self.fn = fn

    def launch(self, request, slot=0):
        return self.fn(
            request.cell, request.snapshot_path, counts=request.counts, thop=request.thop
        )


def slot_for(fn, thop: bool = True) -> Slot:
    """A task's slot whose launches call `fn`."""
    return Slot(FunctionLauncher(fn), 0, RunContext(thop=thop))


def run_in_loop(cells, store, *, console=None, resume=False, **config):
    """`run_cells` as `run_suite` drives it, with a RunConfig built from `config`."""
    config = RunConfig(method=cells[0].method, **config)
    console = console or Console(quiet=True)
    context = config.make_context(store)
    return run_cells(
        store,
        cells,
        config.make_launcher(store, console),
        CellProgress(console, total=0),
        context=context,
        resume=resume,
    )


def run_dirs(out: Path) -> list[Path]:
    """The run directories under a results folder (out/SUITE/RUN), in order."""
    return sorted(p for p in out.glob("*/*") if p.is_dir())
