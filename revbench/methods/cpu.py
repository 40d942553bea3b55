"""The `cpu` method: a real run on the CPU, for smoke tests and CPU throughput.

Memory is not measured here (the CPU allocator keeps no peak statistics); use `estimate`
for memory without a GPU.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..axes import cell_ddp
from ..cell import Cell
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


def tracked_peak(step, warmup: int) -> int:
    """Run `warmup` steps, then one: the peak of that last step under MemTracker, entered
    before the second step (the bucket rebuild), its peak restarted for the last step."""
    from .memtrackers import PeakOnlyMemTracker  # start-up: a second to import, ranks only

    step.run()  # the first iteration: one bucket, the ready order recorded
    model = step.model.module if hasattr(step.model, "module") else step.model
    tracker = PeakOnlyMemTracker()
    tracker.track_external(model, *([step.optimizer] if step.optimizer else []))
    with tracker:
        for _ in range(warmup - 1):
            step.run()
            tracker.reset_mod_stats()  # MemTracker refuses a module run twice otherwise
        tracker._peak_mem.clear()  # the peak of the next step alone, the buckets still known
        tracker._update_peak_stats(None)
        step.run()
        snapshot = tracker.get_tracker_snapshot("peak")
    (device_snapshot,) = snapshot.values()
    return int(device_snapshot["Total"])
