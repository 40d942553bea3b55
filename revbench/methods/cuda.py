"""The `cuda` method: peak CUDA memory and step time, one cell per subprocess.

The launcher runs each cell in its own process (clean allocator; an OOM cannot poison
the next cell). Here: warm-up steps, then `empty_cache()`, then measured steps, each phase
(forward, backward, optimizer) inside `cuda_peak`. The allocator keeps its statistics on
the host at allocation time, so reading them needs no synchronisation and does not
disturb the CUDA-event timing.

Three kinds of memory come out (docs/measuring.md, "Which memory number"): allocated (`peak_bytes`,
the allocator's max_memory_allocated), reserved (`peak_reserved_bytes`,
max_memory_reserved) and process (`process_peak_bytes`: what NVML charges to this process,
the figure nvidia-smi lists: CUDA context, the allocator's segments and memory that
libraries such as cuBLAS and cuDNN take outside the allocator). Process memory needs the
optional `nvidia-ml-py` (`pip install revbench[gpu]`); without it, or where NVML cannot
see this process, the column stays empty and the run's manifest says why (`nvml`).
NVML is read on the host at the end of each measured step, outside its CUDA events:
segments are mapped by cudaMalloc calls, which return on the host, so no synchronisation is
needed there either.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch

from ..cell import Cell
from ..environment import NVML_MISSING
from ..measurement import Measurement, timed
from ..scenario import cell_step
from ..trackers import CudaEventTimer, CudaPeakTracker, measure_steps
from .base import Method


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


class ProcessMemory:
    """This process's memory on one GPU as NVML reports it (nvidia-smi's per-process figure).

    `open` returns a reader, or None and the reason it cannot read (`why`). NVML lists
    processes by host PID: inside a container with its own PID namespace this process is
    not found, and `read` returns None.
    """

    def __init__(self, nvml, handle, pid: int):
        self._nvml, self._handle, self.pid = nvml, handle, pid

    @classmethod
    def open(cls, uuid: str | None, index: int) -> tuple[ProcessMemory | None, str | None]:
        try:
            import pynvml as nvml
        except ImportError:
            return None, NVML_MISSING
        try:
            nvml.nvmlInit()
            handle = None
            if uuid:
                # torch prints the UUID without NVML's "GPU-" prefix
                name = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
                handle = nvml.nvmlDeviceGetHandleByUUID(name)
            else:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
        except nvml.NVMLError as e:
            return None, f"NVML unavailable ({e}): process memory not measured"
        return cls(nvml, handle, os.getpid()), None

    def read(self) -> int | None:
        """Bytes NVML charges to this process on the GPU; None when it does not list it."""
        try:
            processes = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        except self._nvml.NVMLError:
            return None
        for process in processes:
            if process.pid == self.pid:
                used = process.usedGpuMemory
                return int(used) if used is not None else None  # None: hidden (MIG, WSL)
        return None


class CudaMethod(Method):
    name = "cuda"
    fresh_worker_per_cell = True  # a clean allocator: no cell inherits another's segments
    records_snapshots = True
    runs_ddp_ranks = True

    def unavailable(self) -> str | None:
        return None if torch.cuda.is_available() else "no CUDA GPU is visible"

    def measure(self, cell: Cell, snapshot_path: Path | None = None) -> Measurement:
        if not torch.cuda.is_available():
            raise RuntimeError("the cuda method needs a CUDA GPU; none is visible")
        # the current card: 0 in a cell's own worker, the rank's on a DDP rank
        device = torch.device("cuda", torch.cuda.current_device())
        # A budget caps the allocator: a batch that would not fit a card of that size runs
        # out of memory here too, whatever this card's size. Set for every cell, so a cell
        # run in the same process after a capped one gets the whole card back.
        total = torch.cuda.get_device_properties(device).total_memory
        limit = cell.limit_bytes
        torch.cuda.set_per_process_memory_fraction(min(1.0, (limit or total) / total), device)
        stats_before = torch.cuda.memory_stats(device)
        process, _ = ProcessMemory.open(_uuid(device), device.index)
        torch.cuda.synchronize(device)  # the context exists from here
        context = process.read() if process else None
        if context is not None:  # what the process holds less the allocator's segments
            context = max(0, context - torch.cuda.memory_reserved(device))
        step = cell_step(cell, device)
        process_peak: int | None = None

        def read_process() -> None:
            # At the step's end, outside the timed events: segments are only added during a
            # step (none is released without an OOM retry), so the process's memory is
            # highest at its end.
            nonlocal process_peak
            used = process.read() if process else None
            if used is not None:
                process_peak = max(process_peak or 0, used)

        def settle() -> None:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()

        tracker = CudaPeakTracker(device, on_step_end=read_process)
        times_ms = measure_steps(
            step,
            warmup=cell.warmup_steps,
            measure=cell.measure_steps,
            timer=CudaEventTimer(),
            tracker=tracker,
            settle=settle,
            recording=memory_history(snapshot_path),
        )
        phase_peak = tracker.phase_peak
        train = cell.scenario == "train"
        stats = torch.cuda.memory_stats(device)
        return replace(
            timed(times_ms, cell.batch_size),
            peak_bytes=tracker.peak_bytes,
            peak_reserved_bytes=tracker.reserved_peak,
            forward_peak_bytes=phase_peak["forward"],
            process_peak_bytes=process_peak,
            cuda_context_bytes=context,
            num_alloc_retries=_delta(stats, stats_before, "num_alloc_retries"),
            num_ooms=_delta(stats, stats_before, "num_ooms"),
            backward_peak_bytes=phase_peak["backward"] if train else None,
            optimizer_peak_bytes=phase_peak["optimizer"] if train else None,
            snapshot_file=snapshot_path.name if snapshot_path is not None else None,
        )

    def cleanup(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _delta(after: dict, before: dict, key: str) -> int:
    return after.get(key, 0) - before.get(key, 0)


def _uuid(device: torch.device) -> str | None:
    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    return str(uuid) if uuid is not None else None
