"""The `cpu` method: a real run on the CPU, for smoke tests and CPU throughput.

Memory is not measured here (the CPU allocator keeps no peak statistics); use `estimate`
for memory without a GPU.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..cell import Cell
from ..ddp import cell_ddp
from ..ddp import measure_cell as measure_ddp
from ..measurement import Measurement, timed
from ..scenario import cell_step
from .base import Method


class CpuMethod(Method):
    name = "cpu"
    host_memory_is_device = True

    def measure(self, cell: Cell, snapshot_path: Path | None = None) -> Measurement:
        if cell_ddp(cell):  # N gloo ranks, each its step's peak under MemTracker
            return measure_ddp(cell)
        step = cell_step(cell, "cpu")
        for _ in range(cell.warmup_steps):
            step.run()
        times_ms = []
        for _ in range(cell.measure_steps):
            start = time.perf_counter()
            step.run()
            times_ms.append((time.perf_counter() - start) * 1000.0)
        return timed(times_ms, cell.batch_size)
