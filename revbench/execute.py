"""One request carried out in this process: the cell measured by its method, its model
counted. Worker processes and submitit jobs call `run_inline`; so does `--no-isolate`.

The step's machinery (models, DDP, torch) is imported when a cell is carried out, not with
this module: the launchers import it in a run's own process, which may run no cell here
(every cell in workers, or answered from the estimate cache)."""

from __future__ import annotations

import logging
import os
import traceback
import warnings
from dataclasses import replace
from pathlib import Path

from . import status
from .axes import cell_ddp
from .cell import Cell
from .measurement import Counts, Measurement
from .methods import get_method
from .outcome import Outcome, first_line, is_oom

log = logging.getLogger(__name__)


def count(cell: Cell, thop: bool = True) -> Counts:
    """Parameters and MACs of the cell's model at its resolution (batch 1).

    All three come from one model built on the meta device (free for any size): parameters,
    then the flop counter's MACs and thop's from one forward (thop's hooks read shapes
    only, so no real forward is needed; skipped with `thop=False`). Counts are extras: a
    model that cannot be counted still runs, with the count missing.
    """
    # start-up: the flop counter imports triton (0.2 s), which only a counting process needs;
    # the step's machinery (torch) loads with the first cell (see the module)
    from .counting import count_macs, count_macs_both, count_macs_thop, count_params
    from .scenario import build_model, build_on_meta

    params = macs = macs_thop = None
    try:
        model = build_on_meta(lambda: build_model(cell))
    except Exception as exc:
        log.warning("could not build %s on the meta device: %s", cell.model, exc)
        return Counts()
    try:
        params = count_params(model)
    except Exception as exc:
        log.warning("could not count %s's parameters: %s", cell.model, exc)
    if thop:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                macs, macs_thop = count_macs_both(model, cell.resolution)
            return Counts(params=params, macs=macs, macs_thop=macs_thop)
        except Exception:  # counted apart below: one counter's failure costs its figure only
            pass
    try:
        macs = count_macs(model, cell.resolution)
    except Exception as exc:
        log.warning("could not count %s on the meta device: %s", cell.model, exc)
    if thop:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                macs_thop = count_macs_thop(model, cell.resolution)
        except Exception as exc:
            log.warning("thop could not count %s: %s", cell.model, exc)
    return Counts(params=params, macs=macs, macs_thop=macs_thop)


def run_inline(
    cell: Cell, snapshot_path: Path | None = None, *, counts: bool = False, thop: bool = True
) -> Outcome:
    """Measure the cell in this process (no timeout: for debugging, `--no-isolate`), and
    count its model when `counts` is set. A failing cell is the outcome's status."""
    method = get_method(cell.method)
    try:
        if cell_ddp(cell) and method.runs_ddp_ranks:
            measurement = measure_on_ranks(cell)
        else:
            measurement = method.measure(cell, snapshot_path)
        outcome = Outcome(status.OK, measurement=measurement)
    except (Exception, SystemExit) as exc:  # a failed cell becomes a row, never a crash of the run
        failed = status.OOM if is_oom(exc) else status.ERROR
        if failed == status.ERROR and os.environ.get("REVBENCH_DEBUG"):
            traceback.print_exc()
        outcome = Outcome(failed, first_line(exc))
    finally:
        method.cleanup()
    return replace(outcome, counts=count(cell, thop)) if counts else outcome


def measure_on_ranks(cell: Cell) -> Measurement:
    """A `ddp-N` cell on a real method: N ranks on this machine (`revbench.ddp.run_ranks`),
    each measured by the cell's own method; the peak is the ranks' maximum (every rank's in
    the note), the time the slowest rank's, the throughput that of all N batches."""
    import torch

    from .ddp import run_ranks  # start-up: see the module

    config = cell_ddp(cell)
    if cell.method == "cuda" and torch.cuda.device_count() < config.world_size:
        raise RuntimeError(
            f"{cell.scenario} needs {config.world_size} GPUs on this machine; "
            f"{torch.cuda.device_count()} visible"
        )
    ranks = run_ranks(_measure_rank, config.world_size, cell.to_json(), timeout_s=cell.timeout_s)
    slowest = max(ranks, key=lambda m: m.step_time_ms_median)
    median = slowest.step_time_ms_median
    samples = cell.batch_size * config.world_size
    peaks = ", ".join("-" if m.peak_bytes is None else f"{m.peak_bytes / 1e6:.1f}" for m in ranks)
    return Measurement(
        step_time_ms_median=median,
        step_time_ms_iqr=slowest.step_time_ms_iqr,
        step_time_ms_min=slowest.step_time_ms_min,
        throughput_samples_per_s=samples / (median / 1000.0) if median > 0 else None,
        measure_steps=slowest.measure_steps,
        peak_bytes=max(m.peak_bytes for m in ranks),
        note=f"rank peaks MB: {peaks}",
    )


def _measure_rank(rank: int, world_size: int, rendezvous: str, cell_json: str) -> Measurement:
    """One rank: join the group, then the cell's method measures its DDP step (at least two
    warm-up steps: DDP rebuilds its buckets at the second)."""
    from .ddp import init_rank  # start-up: see the module

    cell = Cell.from_json(cell_json)
    init_rank(rank, world_size, rendezvous, "cuda" if cell.method == "cuda" else "cpu")
    rank_cell = replace(cell, warmup_steps=max(2, cell.warmup_steps))
    return get_method(cell.method).measure(rank_cell)
