"""The `cpu` method: a real run on the CPU, for smoke tests and CPU throughput.

Memory is not measured here (the CPU allocator keeps no peak statistics); use `estimate`
for memory without a GPU.
"""

from __future__ import annotations

from pathlib import Path

from ..cell import Cell
from ..ddp import cell_ddp
from ..ddp import measure_cell as measure_ddp
from ..measurement import Measurement, timed
from ..scenario import cell_step
from ..trackers import WallTimer, measure_steps
from .base import Method


class CpuMethod(Method):
    name = "cpu"
    host_memory_is_device = True

    def measure(self, cell: Cell, snapshot_path: Path | None = None) -> Measurement:
        if cell_ddp(cell):  # N gloo ranks, each its step's peak under MemTracker
            return measure_ddp(cell)
        step = cell_step(cell, "cpu")
        times_ms = measure_steps(
            step, warmup=cell.warmup_steps, measure=cell.measure_steps, timer=WallTimer()
        )
        return timed(times_ms, cell.batch_size)
