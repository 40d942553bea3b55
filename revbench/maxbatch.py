"""`revbench max-batch`: the largest training batch that fits a memory budget.

    revbench max-batch --models revvit_small,vit_small_patch16_224 --budget 16GiB
    revbench max-batch --suite max-batch --device cuda --budget auto --margin 5%

For each configuration (model, mode, resolution, precision) and budget B with margin m the
answer is the batch b* on the boundary

    peak(b*) <= L < peak(b* + 1),        L = B * (1 - m)

- `estimate`: peak() is the GPU-free estimator. A probe costs the same whatever the batch
  (fake tensors allocate nothing), so the search is a handful of probes: peaks at batches
  1 and 16 give the line  peak(b) ~ fixed + per_sample * b,  whose crossing with L is
  probed first, then its neighbour; secant steps through the two latest probes follow,
  guarded by galloping (no failing batch yet) and bisection (a step that did not halve the
  bracket), so the answer is the estimator's exact boundary even where memory is not
  linear in b. Real models take 4-5 probes.
- `cuda`: the estimator's answer seeds the same search over real cells, each in its own
  worker with the allocator capped at L (`torch.cuda.set_per_process_memory_fraction`): a
  batch fits when its cell runs and fails when it runs out of memory. The record keeps the
  largest batch that ran (peak allocated and reserved, allocator retries), the first that
  failed and how, and the estimator's peak at that batch.

The batch is never shrunk behind the user's back: a batch-1 OOM is an answer of 0, an
error or timeout ends the search with an `error` record, and a search that reaches
MAX_BATCH_CAP says so. A search is a record like any other (batch_size 0; the answer in
`max_batch`, see `revbench.measurement.MaxBatch`), so plot, report and gate read it.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from . import status
from .cell import Cell, bytes_label
from .errors import UsageError
from .measurement import Counts, MaxBatch, Measurement
from .records import Record

if TYPE_CHECKING:
    from .runner import RunSummary
    from .suite import Suite

# The runner, the launcher and the registry load only when a search runs: every `revbench`
# command imports this module to register its subcommand.

MAX_BATCH_CAP = 2**20  # a search stops here and says so
SEED_BATCHES = (1, 16)  # the estimate path's first two probes: the per-sample line
OVER_BUDGET = "over budget"  # how a batch fails on the estimator

# ------------------------------------------------------------------------- budgets

_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)")
_VALID_BUDGETS = "a size such as 16GiB, 24GB or 17179869184 (bytes; units B, kB, MB, GB, TB, "
_VALID_BUDGETS += "KiB, MiB, GiB, TiB), or auto"


def parse_budget(text: str) -> int | None:
    """Bytes of a budget: '16GiB' -> 16 * 2**30, '16GB' -> 16 * 10**9, '1000' -> 1000;
    None for 'auto' (resolved on the GPU by `auto_budget`). ValueError on anything else."""
    value = str(text).strip().lower()
    if value == "auto":
        return None
    m = _SIZE.fullmatch(value)
    if not m or m.group(2) not in ("", *_UNITS):
        raise ValueError(f"budget {text!r} is invalid; valid: {_VALID_BUDGETS}")
    nbytes = round(float(m.group(1)) * _UNITS[m.group(2) or "b"])
    if nbytes < 1:
        raise ValueError(f"budget {text!r} is invalid: it must be at least one byte")
    return nbytes


def parse_margin(text: str) -> float:
    """'5%' or '0.05' -> 0.05: the fraction of a budget held back, in [0, 1)."""
    value = str(text).strip()
    try:
        margin = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        margin = math.nan
    if not 0.0 <= margin < 1.0:
        raise ValueError(
            f"margin {text!r} is invalid; valid: a percentage below 100 (5%) or a fraction "
            "below 1 (0.05)"
        )
    return margin


_AUTO_PROBE = (
    "import torch; torch.empty(0, device='cuda'); "
    "free, total = torch.cuda.mem_get_info(); print(free, total)"
)


def auto_budget() -> int:
    """What a fresh process can allocate on GPU 0: the card's total memory less its CUDA
    context (and less anything other processes hold). Read in a child process, so this
    one holds no context the cells would have to share the card with."""
    import torch

    if not torch.cuda.is_available():
        raise UsageError(
            "budget 'auto' needs a CUDA GPU and none is visible; give a size, e.g. 16GiB"
        )
    out = subprocess.run(
        [sys.executable, "-c", _AUTO_PROBE], capture_output=True, text=True, timeout=300
    )
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-1:] or [""]
        raise UsageError(f"budget 'auto': could not read the GPU's free memory: {tail[0]}")
    free, _total = map(int, out.stdout.split())
    return free


def resolve_budgets(texts: list[str], where: str = "--budget") -> list[int]:
    """Budgets in bytes, in the order given, `auto` read off the GPU; UsageError naming
    `where` on a bad one."""
    out = []
    for text in texts:
        try:
            nbytes = parse_budget(text)
        except ValueError as e:
            raise UsageError(f"{where}: {e}") from None
        out.append(auto_budget() if nbytes is None else nbytes)
    return list(dict.fromkeys(out))


# -------------------------------------------------------------------------- search


@dataclass(frozen=True)
class Probe:
    """One batch tried: whether it fits, and the peak the search steers by."""

    batch: int
    fits: bool
    peak_bytes: int | None  # estimate: the estimated peak; cuda: reserved peak (None: oom)
    outcome: object = None  # what produced it (a launcher Outcome), for the record


class SearchError(Exception):
    """A probe neither fitted nor ran out of memory (an error, a timeout): no answer."""


@dataclass(frozen=True)
class Boundary:
    max_batch: int  # 0: batch 1 does not fit
    fit: Probe | None  # the probe at max_batch
    failed: Probe | None  # the smallest failing probe, at max_batch + 1; None when capped
    probes: tuple[Probe, ...]  # in the order tried

    @property
    def capped(self) -> bool:
        return self.failed is None


def _crossing(probes: list[Probe], limit: int) -> int | None:
    """Where the line through the two latest probes with peaks meets `limit` (floored):
    the secant step. None when they are flat or fall with the batch."""
    known = [p for p in probes if p.peak_bytes is not None]
    if len(known) < 2:
        return None
    a, b = known[-2], known[-1]
    if a.batch == b.batch or (b.peak_bytes - a.peak_bytes) / (b.batch - a.batch) <= 0:
        return None
    slope = (b.peak_bytes - a.peak_bytes) / (b.batch - a.batch)
    return math.floor(b.batch + (limit - b.peak_bytes) / slope)


def find_boundary(
    probe: Callable[[int], Probe],
    limit: int,
    *,
    seeds: tuple[int, ...] = SEED_BATCHES,
    cap: int = MAX_BATCH_CAP,
) -> Boundary:
    """The largest batch b in [0, cap] that fits while b + 1 does not, by `probe`.

    Seeds first, then secant steps through the two latest probes; a secant guess g is
    followed by its neighbour across the boundary it predicts (g + 1 if g fits, g - 1 if
    not), which ends the search when the guess was right. Without a failing batch yet, each
    step goes past the largest fit by at least 1.5%, 3%, 6%, ... of it (galloping), so a
    wrong secant costs O(log) probes; once bracketed, a guess and neighbour that did not
    halve the bracket are followed by a bisection, so it halves at least every three probes.
    Each batch is probed at most once.
    """
    tried: dict[int, Probe] = {}
    order: list[Probe] = []

    def bracket() -> tuple[int, int | None]:
        hi = min((b for b, p in tried.items() if not p.fits), default=None)
        lo = max((b for b, p in tried.items() if p.fits and (hi is None or b < hi)), default=0)
        return lo, hi

    def run(b: int) -> None:
        p = probe(b)
        tried[b] = p
        order.append(p)

    for b in seeds:
        lo, hi = bracket()
        b = min(b, cap)
        if b > lo and (hi is None or b < hi) and b not in tried:
            run(b)
    gallops = 0  # steps the gallop decided: its exponent
    down_step = 0  # the step below a failure while nothing is known to fit
    last = ""  # the kind of the last step: secant, neighbour, gallop or bisection
    width_before = 0  # the bracket's width before the last secant step
    while True:
        lo, hi = bracket()
        if (hi is not None and hi - lo <= 1) or (hi is None and lo >= cap):
            break
        guess = _crossing(order, limit)
        if hi is None:
            if last == "secant":  # the guess fitted: its neighbour may end the search
                b, last = lo + 1, "neighbour"
            else:
                # At least 1.5%, 3%, 6%, ... of the largest fit further each time.
                step = max(1, lo // 64) * 2**gallops
                b = min(max(guess or 0, lo + step), cap)
                last = "secant" if b > lo + step else "gallop"
                gallops += last == "gallop"
        elif lo == 0 and guess is None:
            # Nothing known to fit (a cuda search whose seed failed): step down from the
            # failure by 3%, 6%, 12%, ... rather than bisect from batch 1.
            down_step = 2 * down_step if down_step else max(1, hi // 32)
            b = max(1, hi - down_step)
        elif last == "secant":
            g = order[-1]
            b, last = (g.batch + 1 if g.fits else g.batch - 1), "neighbour"
        elif (
            guess is None
            or not lo <= guess < hi  # the line misses the bracket: it does not model this
            or (last == "neighbour" and hi - lo > width_before / 2)
        ):
            b, last = (lo + hi) // 2, "bisection"
        else:
            width_before = hi - lo
            b, last = min(max(guess, lo + 1), hi - 1), "secant"
        run(b)
        if hi is None and not order[-1].fits:
            last = ""  # a line from far below overshot: the new bracket starts afresh
    lo, hi = bracket()
    return Boundary(lo, tried.get(lo), tried.get(hi) if hi is not None else None, tuple(order))


# ------------------------------------------------------------------------- probing


class Prober:
    """Launches the probes of one run, each cell once.

    The estimator's peaks do not depend on the budget, so every budget's search over one
    configuration shares them: estimate probes are launched without the budget. Each
    model's parameters and MACs are counted by the launch of its first probe.
    """

    def __init__(self, launch: Callable[..., object]):
        self.launch = launch  # revbench.launcher.run_isolated or run_inline
        self._outcomes: dict[Cell, object] = {}
        self._counts: dict[tuple, Counts] = {}

    def outcome(self, cell: Cell):
        if cell not in self._outcomes:
            model = (cell.model, cell.variant, cell.resolution)
            first = model not in self._counts
            out = self.launch(cell, None, counts=first, thop=False)
            if first:
                self._counts[model] = getattr(out, "counts", None) or Counts()
            self._outcomes[cell] = out
        return self._outcomes[cell]

    def counts(self, cell: Cell) -> Counts | None:
        return self._counts.get((cell.model, cell.variant, cell.resolution))

    def estimate(self, search: Cell, batch: int) -> Probe:
        cell = replace(search, batch_size=batch, method="estimate", budget_bytes=None, margin=None)
        out = self.outcome(cell)
        peak = out.measurement.peak_bytes
        if out.status != status.OK or peak is None:
            raise SearchError(f"b={batch} on the estimator: {out.status}: {out.message}")
        return Probe(batch, peak <= search.limit_bytes, peak, out)

    def cuda(self, search: Cell, batch: int) -> Probe:
        # The budget travels with the cell: its worker caps the allocator at the limit.
        out = self.outcome(replace(search, batch_size=batch))
        if out.status == status.OK:
            return Probe(batch, True, out.measurement.peak_reserved_bytes, out)
        if out.status == status.OOM:
            return Probe(batch, False, None, out)
        raise SearchError(f"b={batch}: {out.status}: {out.message}")


def _cuda_search(cell: Cell, prober: Prober) -> tuple[Boundary | None, Boundary]:
    """The estimator's boundary (None where the estimator fails on the model) and the
    card's, searched from the estimator's answer and its neighbour (else from batch 1)."""
    try:
        est = find_boundary(lambda b: prober.estimate(cell, b), cell.limit_bytes)
    except SearchError:
        est = None
    seeds = (est.max_batch, est.max_batch + 1) if est and est.max_batch else (1,)
    return est, find_boundary(lambda b: prober.cuda(cell, b), cell.limit_bytes, seeds=seeds)


def _estimated_or_none(prober: Prober, cell: Cell, batch: int) -> Probe | None:
    if batch < 1:
        return None
    try:
        return prober.estimate(cell, batch)
    except SearchError:
        return None


def _gb(nbytes: int | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 1e9:.2f} GB"


def search(cell: Cell, prober: Prober) -> Record:
    """The record of one max-batch search: `cell` has batch_size 0, a budget and a margin,
    and its method (estimate or cuda) says where batches are tried."""
    limit = cell.limit_bytes
    within = f"limit {_gb(limit)} ({bytes_label(cell.budget_bytes)}"
    within += f" less {cell.margin:.0%})" if cell.margin else ")"
    try:
        if cell.method == "cuda":
            est, found = _cuda_search(cell, prober)
            at_max = _estimated_or_none(prober, cell, found.max_batch)
        else:
            est = found = find_boundary(lambda b: prober.estimate(cell, b), limit)
    except SearchError as e:
        message = f"search stopped: {e}"[:500]
        return Record.for_cell(
            cell, status=status.ERROR, message=message, counts=prober.counts(cell)
        )
    fit, failed, m = found.fit, found.failed, found.max_batch
    if cell.method == "cuda":
        measured = fit.outcome.measurement if fit else Measurement()
        result = MaxBatch(
            max_batch=m,
            max_batch_peak_bytes=measured.peak_bytes,
            max_batch_reserved_bytes=measured.peak_reserved_bytes,
            max_batch_alloc_retries=measured.num_alloc_retries,
            first_failed_batch=failed.batch if failed else None,
            first_failed_status=failed.outcome.status if failed else None,
            estimated_max_batch=est.max_batch if est else None,
            estimated_peak_bytes=at_max.peak_bytes if at_max else None,
            probes=len(found.probes),
        )
        ran = f"b={m} ran: allocated {_gb(measured.peak_bytes)}, reserved"
        ran += f" {_gb(measured.peak_reserved_bytes)}"
        how = f"{failed.outcome.status} ({failed.outcome.message})" if failed else ""
        failed_text = f"b={failed.batch}: {how}" if failed else ""
    else:
        result = MaxBatch(
            max_batch=m,
            max_batch_peak_bytes=fit.peak_bytes if fit else None,
            next_batch_peak_bytes=failed.peak_bytes if failed else None,
            first_failed_batch=failed.batch if failed else None,
            first_failed_status=OVER_BUDGET if failed else None,
            probes=len(found.probes),
        )
        ran = f"b={m}: {_gb(fit.peak_bytes if fit else None)}"
        failed_text = f"b={failed.batch}: {_gb(failed.peak_bytes)}" if failed else ""
    if m == 0:
        message = f"batch 1 does not fit the {within}: {failed_text}"
    elif found.capped:
        message = f"every batch up to the cap of {m} fits the {within}: {ran}"
    else:
        message = f"{ran} fits the {within}; {failed_text}"
    return Record.for_cell(
        cell,
        status=status.OK,
        message=message[:500],
        counts=prober.counts(cell),
        max_batch=result,
    )


# ------------------------------------------------------------------------- running


def search_cells(
    suite: Suite,
    *,
    method: str,
    budgets: list[int] | None = None,
    margin: float = 0.0,
    **axes,
) -> list[Cell]:
    """One search per configuration of `suite` and budget: `budgets` when given, else each
    group's `budgets`. `axes` replace the suite's (models, resolutions, precisions, modes,
    scenario, optimizer), as in `revbench.suite.expand`; batch sizes are the search's."""
    from .suite import expand

    cells = expand(suite, method=method, batch_sizes=[1], **axes)
    declared = {g["name"]: g.get("budgets") for g in suite.groups}
    declared.setdefault("cli", suite.defaults.get("budgets"))  # models the suite does not list
    resolved: dict[str, list[int]] = {}
    out = []
    for cell in cells:
        if budgets is None and cell.group not in resolved:
            where = f"suite {suite.path} group {cell.group!r}: budgets"
            resolved[cell.group] = resolve_budgets(declared.get(cell.group) or [], where)
        for budget in budgets if budgets is not None else resolved[cell.group]:
            out.append(replace(cell, batch_size=0, budget_bytes=budget, margin=margin))
    if not out:
        raise UsageError(
            f"no budget to search: give --budget (e.g. 16GiB) or `budgets` in suite {suite.name}"
        )
    return out


def run_max_batch(
    suite: Suite,
    cells: list[Cell],
    *,
    out: str | Path = "results",
    resume: str | Path | None = None,
    isolate: bool = True,
    command: str = "",
    note: str | None = None,
    console: Console | None = None,
) -> RunSummary:
    """Search every cell of `cells` (from `search_cells`) into a run directory under `out`,
    appending each record as soon as its search ends; `resume` continues a run."""
    from .launcher import run_inline, run_isolated
    from .runner import RunSummary, check_resume, open_store

    console = console or Console(stderr=True)
    method = cells[0].method
    store = open_store(out, suite.name, resume)
    records: list[Record] = []
    interrupted = False
    with store.lock():
        if resume is not None:
            check_resume(store, suite.name, method, cells)
            repaired = store.repair()
            if repaired:
                console.print(escape(repaired), highlight=False)
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
        done = store.measured_keys() if resume is not None else set()
        todo = [c for c in cells if c.key not in done]
        console.print(
            f"{suite.name}: {len(todo)} max-batch search(es), method {method}, writing {store.dir}"
        )
        prober = Prober(run_isolated if isolate else run_inline)
        try:
            for cell in todo:
                record = search(cell, prober)
                store.append(record)
                records.append(record)
                style = status.STYLE.get(record.status, "red")
                console.print(
                    f"[{style}]{record.status:>7}[/] "
                    + escape(f"{cell.label()}: {record.message}"),
                    highlight=False,
                )
        except KeyboardInterrupt:
            interrupted = True
            console.print(f"[red]interrupted[/]: continue with --resume {store.dir}")
    return RunSummary(store, records, len(cells) - len(todo), interrupted)


# ----------------------------------------------------------------------------- CLI


def register_cli(sub) -> None:
    from .cli import _csv

    p = sub.add_parser(
        "max-batch",
        help="the largest training batch that fits a memory budget",
        description="The largest batch whose peak memory fits each budget: searched on the "
        "GPU-free estimator (estimate) or confirmed by real runs on the card (cuda).",
    )
    p.add_argument(
        "--suite", default="max-batch", help="built-in suite or .toml (default: max-batch)"
    )
    p.add_argument(
        "--budget",
        type=_csv,
        help="comma-separated budgets: 16GiB (2^30 bytes), 16GB (10^9), bytes, or auto (the "
        "GPU's memory less its CUDA context); default: the suite's",
    )
    p.add_argument("--margin", default="0%", help="share of each budget held back (default 0%%)")
    p.add_argument(
        "--device", default="auto", help="auto (cuda if a GPU is present) | estimate | cuda"
    )
    p.add_argument(
        "--models", type=_csv, help="comma-separated model names (from the suite or not)"
    )
    p.add_argument("--resolutions", type=_csv, help="comma-separated sides in pixels, or 'native'")
    p.add_argument("--precision", type=_csv, help="fp32, amp-bf16, amp-fp16 (comma-separated)")
    p.add_argument("--modes", type=_csv, help="reversible, vanilla, checkpoint (comma-separated)")
    p.add_argument("--scenario", help="train | infer")
    p.add_argument("--optimizer", help="sgd (with momentum) | adamw")
    p.add_argument("--out", default="results", help="results directory (default: results/)")
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        help="continue a run, skipping finished searches: the suite's latest run, or RUN_DIR",
    )
    p.add_argument(
        "--no-isolate",
        dest="isolate",
        action="store_false",
        help="probe in this process, without timeouts (for debugging)",
    )
    p.add_argument("--dry-run", action="store_true", help="list the searches and exit")
    p.set_defaults(func=cmd_max_batch)


def cmd_max_batch(args: argparse.Namespace) -> int:
    from .cli import _console
    from .methods import resolve_device
    from .suite import load_suite

    console = _console()
    try:
        margin = parse_margin(args.margin)
    except ValueError as e:
        raise UsageError(f"--margin: {e}") from None
    suite = load_suite(args.suite)
    method, note = resolve_device(args.device)
    if method not in ("estimate", "cuda"):
        raise UsageError(
            f"device {args.device!r} is invalid for max-batch; valid: auto, estimate, cuda"
        )
    budgets = resolve_budgets(args.budget) if args.budget is not None else None
    cells = search_cells(
        suite,
        method=method,
        budgets=budgets,
        margin=margin,
        models=args.models,
        resolutions=args.resolutions,
        precisions=args.precision,
        modes=args.modes,
        scenario=args.scenario,
        optimizer=args.optimizer,
    )
    if args.dry_run:
        for cell in cells:
            print(cell.label())
        return 0
    summary = run_max_batch(
        suite,
        cells,
        out=args.out,
        resume=args.resume,
        isolate=args.isolate,
        command=shlex.join(["revbench", *getattr(args, "argv", ["max-batch"])]),
        note=note,
        console=console,
    )
    console.print(summary_table(summary.records, console.width))
    console.print(f"results: {summary.store.results_path}")
    return 130 if summary.interrupted else 0


def summary_table(records: list[Record], width: int = 80):
    """The searches as a table no wider than `width`: the answer, the peaks around it, and
    on cuda the estimate's."""
    from .cell import model_label
    from .outputs import EMPTY, fit_table

    cuda = any(r.method == "cuda" for r in records)
    columns = ["model", "mode", "res", "prec", "budget", "max batch", "peak GB", "next GB"]
    columns += ["probes"] + (["reserved GB", "retries", "estimate", "est. error"] if cuda else [])
    rows = []
    for r in records:
        row = [
            model_label(r.model, r.variant),
            r.mode,
            str(r.resolution),
            r.precision,
            bytes_label(r.budget_bytes) + (f"-{r.margin:.0%}" if r.margin else ""),
        ]
        if r.status != status.OK:
            rows.append(row + [r.status] + [EMPTY] * (len(columns) - 6))
            continue
        row += [
            f"{r.max_batch:,}" + ("+" if r.first_failed_batch is None else ""),
            _fmt_gb(r.max_batch_peak_bytes),
            _fmt_gb(r.next_batch_peak_bytes),
            str(r.probes),
        ]
        if cuda:
            error = None
            if r.estimated_peak_bytes and r.max_batch_peak_bytes:
                error = r.estimated_peak_bytes / r.max_batch_peak_bytes - 1
            row += [
                _fmt_gb(r.max_batch_reserved_bytes),
                EMPTY if r.max_batch_alloc_retries is None else str(r.max_batch_alloc_retries),
                EMPTY if r.estimated_max_batch is None else f"{r.estimated_max_batch:,}",
                EMPTY if error is None else f"{error:+.1%}",
            ]
        rows.append(row)
    title = "max batch within each budget"
    return fit_table(title, columns, rows, ("model", "mode", "prec"), width)


def _fmt_gb(nbytes: int | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 1e9:.2f}"
