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
import shlex
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from . import status
from .budget import parse_margin, resolve_budgets
from .cards import LEFT_OUT
from .cell import Cell, bytes_label, cell_label, model_label, readable_bytes
from .cli_args import (
    add_axis_flags,
    add_optimizer_flag,
    add_run_dir_flags,
    axis_overrides,
    csv_list,
    make_console,
)
from .errors import UsageError
from .measurement import MaxBatch, Measurement
from .methods import resolve_device
from .outputs import EMPTY, fit_table
from .records import Record

if TYPE_CHECKING:
    from .launcher import Slot
    from .suite import Suite

# The run loop, the launchers and the registry load only when a search runs: every
# `revbench` command imports this module to register its subcommand.

MAX_BATCH_CAP = 2**20  # a search stops here and says so
SEED_BATCHES = (1, 16)  # the estimate path's first two probes: the per-sample line
OVER_BUDGET = "over budget"  # how a batch fails on the estimator

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
    """Launches one search's probes on its slot, each cell once per run.

    The estimator's peaks do not depend on the budget, so every budget's search over one
    configuration shares them: estimate probes are launched without the budget, and their
    outcomes are kept for the run (`outcomes`, shared by every slot). Each model's
    parameters and MACs are counted by the launch of its first probe.
    """

    def __init__(self, slot: Slot, outcomes: dict[Cell, object], guard: threading.Lock):
        self.slot = slot
        self._outcomes = outcomes
        self._guard = guard

    def outcome(self, cell: Cell):
        with self._guard:
            known = self._outcomes.get(cell)
        if known is None:
            known = self.slot.launch(cell)
            with self._guard:
                self._outcomes[cell] = known
        return known

    def counts(self, cell: Cell):
        return self.slot.counts(cell)

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
    return "-" if nbytes is None else readable_bytes(nbytes)


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
    if cell.method == "estimate" and cell.card != "cpu":
        message += f"; {LEFT_OUT_NOTE}"
    return Record.for_cell(
        cell,
        status=status.OK,
        message=message[:500],
        counts=prober.counts(cell),
        max_batch=result,
    )


# What an estimate for a card leaves out, said in each estimated search's record and
# under the table.
LEFT_OUT_NOTE = "leaves out " + ", ".join(LEFT_OUT)


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
    from .suite import expand  # start-up: the registry (with its plugins), when a search is made

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


class SearchTask:
    """max-batch's task for the run loop: one search per cell, its probes launched on the
    cell's slot, estimator probes shared across the run's searches."""

    def __init__(self) -> None:
        self._outcomes: dict[Cell, object] = {}
        self._guard = threading.Lock()

    def __call__(self, cell: Cell, slot: Slot) -> Record:
        return search(cell, Prober(slot, self._outcomes, self._guard))


class SearchProgress:
    """Progress of a max-batch run: one line per finished search, its answer in the
    message (the run loop's `CellProgress` interface)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.total = 0

    def __enter__(self) -> SearchProgress:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def start(self, cell: Cell) -> None:
        return None

    def done(self, record: Record, where: str = "") -> None:
        style = status.STYLE.get(record.status, "red")
        note = f" [{where}]" if where else ""
        self.console.print(
            f"[{style}]{record.status:>7}[/] "
            + escape(f"{cell_label(record)}: {record.message}{note}"),
            highlight=False,
        )


# ----------------------------------------------------------------------------- CLI


def register_cli(sub) -> None:
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
        type=csv_list,
        help="comma-separated budgets: 16GiB (2^30 bytes), 16GB (10^9), bytes, or auto (the "
        "GPU's memory less its CUDA context); default: the suite's",
    )
    p.add_argument("--margin", default="0%", help="share of each budget held back (default 0%%)")
    p.add_argument(
        "--device", default="auto", help="auto (cuda if a GPU is present) | estimate | cuda"
    )
    add_axis_flags(
        p, models_help="comma-separated model names (from the suite or not)", batch_sizes=False
    )
    add_optimizer_flag(p)
    add_run_dir_flags(p, skipping="finished searches")
    p.add_argument(
        "--no-isolate",
        dest="isolate",
        action="store_false",
        help="probe in this process, without timeouts (for debugging)",
    )
    p.add_argument("--dry-run", action="store_true", help="list the searches and exit")
    p.set_defaults(func=cmd_max_batch)


def cmd_max_batch(args: argparse.Namespace) -> int:
    # start-up: the run spine and the registry (with its plugins) load with these, when the
    # command runs, not when its options are read for the parser
    from .runner import RunConfig, run_suite
    from .suite import load_suite

    console = make_console()
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
    axes = axis_overrides(args)
    del axes["batch_sizes"]  # the search's
    cells = search_cells(suite, method=method, budgets=budgets, margin=margin, **axes)
    config = RunConfig(
        method=method,
        out=args.out,
        resume=args.resume,
        isolate=args.isolate,
        thop=False,  # a search counts parameters and MACs on the meta device only
        jobs=1,  # one worker: its estimator answers every probe of a model from two traces
        command=shlex.join(["revbench", *getattr(args, "argv", ["max-batch"])]),
        note=note,
    )
    if args.dry_run:
        for cell in cells:
            print(cell.label())
        return 0
    summary = run_suite(
        suite,
        cells,
        config,
        console=console,
        task=SearchTask(),
        progress=SearchProgress(console),
        what="max-batch search(es)",
    )
    console.print(summary_table(summary.records, console.width))
    if any(r.method == "estimate" and r.card != "cpu" for r in summary.records):
        console.print(
            f"The estimate {LEFT_OUT_NOTE}; --margin holds memory back for them "
            '(why they are left out: docs/measuring.md, "What a card adds").',
            highlight=False,
        )
    console.print(f"results: {summary.store.results_path}")
    return 130 if summary.interrupted else 0


def summary_table(records: list[Record], width: int = 80):
    """The searches as a table no wider than `width`: the answer, the peaks around it, and
    on cuda the estimate's."""
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
