"""One request carried out in this process: the cell measured by its method, its model
counted. Worker processes and submitit jobs call `run_inline`; so does `--no-isolate`."""

from __future__ import annotations

import logging
import os
import traceback
import warnings
from dataclasses import replace
from pathlib import Path

from . import status
from .cell import Cell
from .counting import count_macs, count_macs_thop, count_params
from .measurement import Counts
from .methods import get_method
from .outcome import Outcome, first_line, is_oom
from .scenario import build_model

log = logging.getLogger(__name__)


def count(cell: Cell, thop: bool = True) -> Counts:
    """Parameters and MACs of the cell's model at its resolution (batch 1).

    Params and flop-counter MACs come from the meta device (free for any size); thop needs
    a real forward on the CPU and is skipped with `thop=False`. Counts are extras: a model
    that cannot be counted still runs, with the count missing.
    """
    import torch

    params = macs = macs_thop = None
    try:
        with torch.device("meta"):
            model = build_model(cell)
        params = count_params(model)
        macs = count_macs(model, cell.resolution)
    except Exception as exc:
        log.warning("could not count %s on the meta device: %s", cell.model, exc)
    if thop:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                macs_thop = count_macs_thop(build_model(cell), cell.resolution)
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
        outcome = Outcome(status.OK, measurement=method.measure(cell, snapshot_path))
    except (Exception, SystemExit) as exc:  # a failed cell becomes a row, never a crash of the run
        failed = status.OOM if is_oom(exc) else status.ERROR
        if failed == status.ERROR and os.environ.get("REVBENCH_DEBUG"):
            traceback.print_exc()
        outcome = Outcome(failed, first_line(exc))
    finally:
        method.cleanup()
    return replace(outcome, counts=count(cell, thop)) if counts else outcome
