"""The `cpu` method: a real run on the CPU, for smoke tests and CPU throughput.

Memory is not measured here (the CPU allocator keeps no peak statistics); use `estimate`
for memory without a GPU.
"""

from __future__ import annotations

import time

from ..cell import Cell
from ..scenario import build_step
from .timing import summarize_times


def measure(cell: Cell, **_) -> dict:
    model = cell.build_model()
    step = build_step(
        model,
        scenario=cell.scenario,
        precision=cell.precision,
        batch_size=cell.batch_size,
        resolution=cell.resolution,
        device="cpu",
        optimizer=cell.optimizer,
    )
    for _ in range(cell.warmup_steps):
        step.run()
    times = []
    for _ in range(cell.measure_steps):
        start = time.perf_counter()
        step.run()
        times.append((time.perf_counter() - start) * 1000.0)
    return summarize_times(times, cell.batch_size)
