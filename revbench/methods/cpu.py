"""The `cpu` method: a real run on the CPU, for smoke tests and CPU throughput.

Memory is not measured here (the CPU allocator keeps no peak statistics); use `estimate`
for memory without a GPU.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..cell import Cell
from ..ddp import cell_ddp, tracked_peak
from ..measurement import Measurement, timed
from ..scenario import cell_step
from ..trackers import WallTimer, measure_steps
from .base import Method


class CpuMethod(Method):
    name = "cpu"
    host_memory_is_device = True
    runs_ddp_ranks = True

    def measure(self, cell: Cell, snapshot_path: Path | None = None) -> Measurement:
        step = cell_step(cell, "cpu")
        warmup, peak = cell.warmup_steps, None
        if cell_ddp(cell):
            # One rank of a data-parallel cell: its step's peak under MemTracker (the CPU
            # allocator keeps no peak), the tracker entered before the bucket rebuild.
            peak, warmup = tracked_peak(step, warmup), 0
        times_ms = measure_steps(step, warmup=warmup, measure=cell.measure_steps, timer=WallTimer())
        return replace(timed(times_ms, cell.batch_size), peak_bytes=peak)
