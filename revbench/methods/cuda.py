"""The `cuda` method: peak CUDA memory and step time, one cell per subprocess.

The launcher runs each cell in its own process (clean allocator; an OOM cannot poison
the next cell). Here: warm-up steps, then `empty_cache()`, then measured steps, each phase
(forward, backward, optimizer) inside `cuda_peak`. The allocator keeps its statistics on
the host at allocation time, so reading them needs no synchronisation and does not
disturb the CUDA-event timing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..cell import Cell
from ..ddp import cell_ddp
from ..ddp import measure_cell as measure_ddp
from ..measurement import Measurement, timed
from ..scenario import cell_step
from .base import Method

PHASES = ("forward", "backward", "optimizer")


@dataclass
class PeakMemory:
    """Peaks of the caching allocator over a block, in bytes."""

    allocated_bytes: int = 0  # in live tensors (512-byte blocks)
    reserved_bytes: int = 0  # in segments the allocator holds


@contextlib.contextmanager
def cuda_peak(device: torch.device | int | None = None) -> Iterator[PeakMemory]:
    """Reset the allocator's peaks, run the block, read them (also when the block raises).

    with cuda_peak() as peak:
        step.run()
    peak.allocated_bytes
    """
    peak = PeakMemory()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        yield peak
    finally:
        peak.allocated_bytes = torch.cuda.max_memory_allocated(device)
        peak.reserved_bytes = torch.cuda.max_memory_reserved(device)


@contextlib.contextmanager
def memory_history(path: Path | None) -> Iterator[None]:
    """Record the allocator's history over the block into `path` (for PyTorch's memory_viz);
    None records nothing. Recording stops whatever happens."""
    if path is None:
        yield
        return
    torch.cuda.memory._record_memory_history(max_entries=200_000)
    try:
        yield
        torch.cuda.memory._dump_snapshot(str(path))
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)


class CudaMethod(Method):
    name = "cuda"
    fresh_worker_per_cell = True  # a clean allocator: no cell inherits another's segments
    records_snapshots = True

    def unavailable(self) -> str | None:
        return None if torch.cuda.is_available() else "no CUDA GPU is visible"

    def measure(self, cell: Cell, snapshot_path: Path | None = None) -> Measurement:
        if not torch.cuda.is_available():
            raise RuntimeError("the cuda method needs a CUDA GPU; none is visible")
        if cell_ddp(cell):  # N nccl ranks, one card each
            return measure_ddp(cell)
        device = torch.device("cuda", 0)
        # A budget caps the allocator: a batch that would not fit a card of that size runs
        # out of memory here too, whatever this card's size. Set for every cell, so a cell
        # run in the same process after a capped one gets the whole card back.
        total = torch.cuda.get_device_properties(device).total_memory
        limit = cell.limit_bytes
        torch.cuda.set_per_process_memory_fraction(min(1.0, (limit or total) / total), device)
        retries_before = torch.cuda.memory_stats(device).get("num_alloc_retries", 0)
        step = cell_step(cell, device)
        for _ in range(cell.warmup_steps):
            step.run()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()

        phase_peak = dict.fromkeys(PHASES, 0)
        reserved_peak = 0
        events = []
        with memory_history(snapshot_path):
            for _ in range(cell.measure_steps):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                for phase, run in zip(PHASES, (step.forward, step.backward, step.optimizer_step)):
                    with cuda_peak(device) as peak:
                        run()
                    phase_peak[phase] = max(phase_peak[phase], peak.allocated_bytes)
                    reserved_peak = max(reserved_peak, peak.reserved_bytes)
                end.record()
                events.append((start, end))
            torch.cuda.synchronize()

        train = cell.scenario == "train"
        return replace(
            timed([s.elapsed_time(e) for s, e in events], cell.batch_size),
            peak_bytes=max(phase_peak.values()),
            peak_reserved_bytes=reserved_peak,
            forward_peak_bytes=phase_peak["forward"],
            num_alloc_retries=torch.cuda.memory_stats(device).get("num_alloc_retries", 0)
            - retries_before,
            backward_peak_bytes=phase_peak["backward"] if train else None,
            optimizer_peak_bytes=phase_peak["optimizer"] if train else None,
            snapshot_file=snapshot_path.name if snapshot_path is not None else None,
        )

    def cleanup(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
