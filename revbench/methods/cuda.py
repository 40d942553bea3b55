"""The `cuda` method: peak CUDA memory and step time, one cell per subprocess.

The launcher runs each cell in its own process (clean allocator; an OOM cannot poison
the next cell). Here: warm-up steps, then `empty_cache()` and `reset_peak_memory_stats()`,
then measured steps. The peak of each phase (forward, backward, optimizer) is read and
reset between phases; the allocator's statistics are kept on the host at allocation time,
so reading them needs no synchronisation and does not disturb the CUDA-event timing.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..cell import Cell
from ..scenario import build_step
from .timing import summarize_times

PHASES = ("forward", "backward", "optimizer")


def measure(cell: Cell, snapshot_path: str | Path | None = None, **_) -> dict:
    if not torch.cuda.is_available():
        raise RuntimeError("the cuda method needs a CUDA GPU; none is visible")
    device = torch.device("cuda", 0)
    with device:
        model = cell.build_model()
    step = build_step(
        model,
        scenario=cell.scenario,
        precision=cell.precision,
        batch_size=cell.batch_size,
        resolution=cell.resolution,
        device=device,
        optimizer=cell.optimizer,
    )
    for _ in range(cell.warmup_steps):
        step.run()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()

    phase_peak = dict.fromkeys(PHASES, 0)
    reserved_peak = 0
    events = []
    recording = snapshot_path is not None
    if recording:
        torch.cuda.memory._record_memory_history(max_entries=200_000)
    try:
        for _ in range(cell.measure_steps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for phase, run in zip(PHASES, (step.forward, step.backward, step.optimizer_step)):
                run()
                phase_peak[phase] = max(phase_peak[phase], torch.cuda.max_memory_allocated())
                reserved_peak = max(reserved_peak, torch.cuda.max_memory_reserved())
                torch.cuda.reset_peak_memory_stats()
            end.record()
            events.append((start, end))
        torch.cuda.synchronize()
        if recording:
            torch.cuda.memory._dump_snapshot(str(snapshot_path))
    finally:
        if recording:
            torch.cuda.memory._record_memory_history(enabled=None)

    times = [s.elapsed_time(e) for s, e in events]
    return {
        "peak_bytes": max(phase_peak.values()),
        "peak_reserved_bytes": reserved_peak,
        "forward_peak_bytes": phase_peak["forward"],
        "backward_peak_bytes": phase_peak["backward"] if cell.scenario == "train" else None,
        "optimizer_peak_bytes": phase_peak["optimizer"] if cell.scenario == "train" else None,
        "snapshot_file": Path(snapshot_path).name if recording else None,
        **summarize_times(times, cell.batch_size),
    }
