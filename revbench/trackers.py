"""What watches a step while it is measured: memory trackers, step timers, and the one loop
that runs warm-up and measured steps (`measure_steps`) for every method and DDP rank.

A tracker is entered around each phase of a measured step (forward, backward, optimizer)
and keeps the peak it saw per phase; a timer brackets each measured step. The cuda method
tracks the caching allocator's peaks and times with CUDA events; the cpu method times with
the wall clock; a DDP rank does what its device's method does. The estimator's tracker,
MemTracker keeping only the global peak, lives with the estimator's trackers
(`revbench.methods.memtrackers.PeakOnlyMemTracker`): DDP's CPU ranks read their peak from it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

PHASES = ("forward", "backward", "optimizer")


# ------------------------------------------------------------------------------- timers


class WallTimer:
    """Step times from the host's clock (CPU steps: nothing runs asynchronously)."""

    def __init__(self) -> None:
        self._times: list[float] = []
        self._start = 0.0

    def start(self) -> None:
        self._start = time.perf_counter()

    def stop(self) -> None:
        self._times.append((time.perf_counter() - self._start) * 1000.0)

    def times_ms(self) -> list[float]:
        return list(self._times)


class CudaEventTimer:
    """Step times from CUDA events recorded on the stream: the GPU's own time, without a
    synchronisation inside the measured steps (read once, after the last)."""

    def __init__(self) -> None:
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def start(self) -> None:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        self._events.append((event, event))

    def stop(self) -> None:
        start, _ = self._events[-1]
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self._events[-1] = (start, end)

    def times_ms(self) -> list[float]:
        torch.cuda.synchronize()
        return [start.elapsed_time(end) for start, end in self._events]


# ----------------------------------------------------------------------------- trackers


@dataclass
class PeakMemory:
    """Peaks of the caching allocator over a block, in bytes."""

    allocated_bytes: int = 0  # in live tensors (512-byte blocks)
    reserved_bytes: int = 0  # in segments the allocator holds


@contextlib.contextmanager
def cuda_peak(device: torch.device | int | None = None) -> Iterator[PeakMemory]:
    """Reset the allocator's peaks, run the block, read them (also when the block raises).
    The allocator keeps its statistics on the host at allocation time: reading them needs
    no synchronisation and does not disturb CUDA-event timing."""
    peak = PeakMemory()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        yield peak
    finally:
        peak.allocated_bytes = torch.cuda.max_memory_allocated(device)
        peak.reserved_bytes = torch.cuda.max_memory_reserved(device)


class NoTracker:
    """Tracks nothing (the cpu method's timed steps)."""

    def phase(self, name: str) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def step_done(self) -> None:
        return None


@dataclass
class CudaPeakTracker:
    """The caching allocator's allocated peak per phase and reserved peak over every
    measured step; `on_step_end` runs after each step (the cuda method samples NVML there,
    outside the timed events)."""

    device: torch.device
    on_step_end: Callable[[], None] | None = None
    phase_peak: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASES, 0))
    reserved_peak: int = 0

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        with cuda_peak(self.device) as peak:
            yield
        self.phase_peak[name] = max(self.phase_peak[name], peak.allocated_bytes)
        self.reserved_peak = max(self.reserved_peak, peak.reserved_bytes)

    def step_done(self) -> None:
        if self.on_step_end is not None:
            self.on_step_end()

    @property
    def peak_bytes(self) -> int:
        return max(self.phase_peak.values())


def measure_steps(
    step,
    *,
    warmup: int,
    measure: int,
    timer,
    tracker=None,
    settle: Callable[[], None] | None = None,
    recording: contextlib.AbstractContextManager | None = None,
) -> list[float]:
    """Run `warmup` steps, `settle()` (cuda: synchronise and empty the cache), then
    `measure` steps, each timed by `timer` and each phase inside `tracker.phase`, all of
    them inside `recording` (cuda: the allocator's history for --memory-snapshot); the
    measured steps' times in milliseconds."""
    tracker = tracker or NoTracker()
    for _ in range(warmup):
        step.run()
    if settle is not None:
        settle()
    phases = (step.forward, step.backward, step.optimizer_step)
    with recording or contextlib.nullcontext():
        for _ in range(measure):
            timer.start()
            for name, run in zip(PHASES, phases):
                with tracker.phase(name):
                    run()
            timer.stop()
            tracker.step_done()
        return timer.times_ms()
