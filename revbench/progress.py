"""Progress of a run: cells done / total, time elapsed and time left, one line per cell.

The runner tells a `CellProgress` when a cell starts and when its record is stored; what
the user sees depends on where stderr goes. On a terminal, a live bar (done / total,
elapsed, remaining, the cell in flight) sits under the per-cell lines and is removed at
the end. Anywhere else (a log file, CI, a pipe), nothing is redrawn: each finished cell
is one line carrying the same counts and times, so the log reads top to bottom.

Time left comes from each cell's expected cost, corrected by the pace so far
(`revbench.eta`), where the run gives one (`progress.eta`); else from the mean time per
finished cell. Either is a guide, shown to the minute.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn
from rich.text import Text

from . import status
from .cell import cell_label
from .eta import Eta

BAR_WIDTH = 20


def clock(seconds: float) -> str:
    """Elapsed time as h:mm:ss (m:ss under an hour)."""
    s = int(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def time_left(elapsed: float, done: int, total: int, eta: Eta | None = None) -> str:
    """The remaining time, rounded as the guess it is: from `eta` where given, else at the
    mean pace per cell so far."""
    if done == 0:
        return "?"
    if done >= total:
        return "0s"
    seconds = eta.seconds_left(elapsed) if eta is not None else None
    if seconds is None:
        seconds = elapsed / done * (total - done)
    if seconds < 60:
        return "<1 min"
    minutes = round(seconds / 60)
    return f"~{minutes} min" if minutes < 120 else f"~{minutes / 60:.1f} h"


class _LeftColumn(ProgressColumn):
    """'~12 min left' from the cells' expected costs and the pace (rich's own column follows
    a moving speed window that swings wildly between a small and a large model)."""

    def __init__(self, progress: CellProgress):
        super().__init__()
        self.progress = progress

    def render(self, task) -> Text:
        elapsed = task.elapsed or 0.0
        done, total = int(task.completed), int(task.total or 0)
        return Text(f"{time_left(elapsed, done, total, self.progress.eta)} left")


class _ElapsedColumn(ProgressColumn):
    def render(self, task) -> Text:
        return Text(clock(task.elapsed or 0.0))


class CellProgress:
    """Reports a run's cells as they finish. Use as a context manager around the loop:

        with CellProgress(console, total=len(cells), title=name) as progress:
            for cell in cells:
                progress.start(cell)      # optional: names the cell in flight
                ...
                progress.done(record)     # one line per stored record

    `live` (default: stderr is an interactive terminal) chooses the redrawn bar.
    """

    def __init__(
        self, console: Console, total: int, title: str = "", live: bool | None = None
    ) -> None:
        self.console = console
        self.total = total
        self.title = title
        self.finished = 0
        self.live = (console.is_terminal and not console.is_dumb_terminal) if live is None else live
        self._started = time.monotonic()
        self._bar: Progress | None = None
        self._task = None
        self.eta: Eta | None = None  # the cells' expected costs, where the run knows them

    def __enter__(self) -> CellProgress:
        self._started = time.monotonic()
        if self.live and self.total:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=BAR_WIDTH),
                MofNCompleteColumn(),
                _ElapsedColumn(),
                _LeftColumn(self),
                TextColumn("{task.fields[cell]}"),
                console=self.console,
                transient=True,  # the per-cell lines stay; the bar goes
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(escape(self.title), total=self.total, cell="")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)
            self._bar = None
        if self.total and exc_type is None:
            self.console.print(
                f"{self.finished}/{self.total} cell(s) in {clock(self.elapsed)}", highlight=False
            )

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def start(self, cell) -> None:
        """`cell` (anything with .label()) is now being measured."""
        if self._bar is not None:
            # The bar stays one line: the cell's label gets the width the counts leave.
            n = len(str(self.total))
            used = len(self.title) + BAR_WIDTH + 2 * n + 1 + len("0:00:00 ~999 min left") + 6
            label = cell.label()
            room = max(10, self.console.width - used)
            if len(label) > room:
                label = label[: room - 1] + "…"
            self._bar.update(self._task, cell=escape(label))

    def done(self, record, where: str = "") -> None:
        """`record` (a Record) is stored: print its line, advance the counts. `where`
        names what ran it when several workers share the cells ("worker 1")."""
        self.finished += 1
        if self.eta is not None:
            self.eta.done(record.key)
        style = status.STYLE.get(record.status, "red")
        # Labels and messages carry brackets ("[depth=4]"): not rich markup.
        note = f" ({record.message})" if record.message else ""
        note += f" [{where}]" if where else ""
        line = f"[{style}]{record.status:>7}[/] " + escape(cell_label(record) + note)
        if self._bar is not None:
            self._bar.advance(self._task)
            self._bar.console.print(line, highlight=False, soft_wrap=True)
            return
        width = len(str(self.total))
        left = time_left(self.elapsed, self.finished, self.total, self.eta)
        times = f"{clock(self.elapsed)}, {left} left"
        self.console.print(
            escape(f"[{self.finished:>{width}}/{self.total} {times}] ") + line,
            highlight=False,
            soft_wrap=True,  # one line per cell in a log; the terminal wraps it if it must
        )
