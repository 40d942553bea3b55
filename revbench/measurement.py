"""What measuring a cell yields: counts of the model and a method's measurement.

Units are in the field names; None means not measured. The field names are the record's
columns (`revbench.records.Record` has every one of them), so a method fills a typed
result and the record copies it field by field.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

MEMORY_CATEGORIES = (
    "parameters",
    "buffers",
    "gradients",
    "activations",
    "temporaries",
    "optimizer_state",
    "other",
    "library_workspace",
)


@dataclass(frozen=True)
class Counts:
    """Deterministic counts of a model at one resolution (batch 1)."""

    params: int | None = None
    macs: int | None = None  # torch.utils.flop_counter FLOPs / 2
    macs_thop: int | None = None  # the RevBiFPN paper's thop convention


@dataclass(frozen=True)
class Measurement:
    """One cell as a method measured it."""

    # memory: peak over the step, of three kinds (docs/measuring.md, "Which memory number").
    # allocated: bytes in live tensors, 512-byte blocks. cuda: max_memory_allocated;
    # estimate: MemTracker's peak.
    peak_bytes: int | None = None
    # reserved: segments the caching allocator holds. cuda: max_memory_reserved; estimate:
    # the allocator model (revbench.caching_allocator) replaying the step's allocations and frees.
    peak_reserved_bytes: int | None = None
    # reserved but not allocated at the reserved peak (estimate: the allocator model)
    fragmentation_bytes: int | None = None
    # process: the GPU memory NVML charges to the process (context, allocator's segments,
    # libraries' workspaces: what nvidia-smi lists), sampled at each step's end; cuda only
    process_peak_bytes: int | None = None
    cuda_context_bytes: int | None = None  # cuda: process memory before any tensor exists
    forward_peak_bytes: int | None = None
    backward_peak_bytes: int | None = None
    optimizer_peak_bytes: int | None = None
    # cuda: times the allocator freed its cache and retried an allocation (a cell that only
    # ran after flushing the cache is at the edge of fitting); warm-up included
    num_alloc_retries: int | None = None
    num_ooms: int | None = None  # cuda: out-of-memory errors the allocator raised, warm-up included
    # the estimator's breakdown at the peak (MEMORY_CATEGORIES); sums to peak_bytes
    mem_parameters_bytes: int | None = None
    mem_buffers_bytes: int | None = None
    mem_gradients_bytes: int | None = None
    mem_activations_bytes: int | None = None
    mem_temporaries_bytes: int | None = None
    mem_optimizer_state_bytes: int | None = None
    mem_other_bytes: int | None = None
    mem_library_workspace_bytes: int | None = None  # a card's cuBLAS workspaces (estimate)
    # time over the measured steps (cuda: CUDA events; cpu: perf_counter)
    step_time_ms_median: float | None = None
    step_time_ms_iqr: float | None = None
    step_time_ms_min: float | None = None
    throughput_samples_per_s: float | None = None
    measure_steps: int | None = None
    snapshot_file: str | None = None  # the allocator history, next to the results
    # the estimator's ESTIMATOR_VERSION (revbench.methods.estimate_method): what the estimate cache
    # keys on and the gate checks; None for the measured methods
    estimator_version: int | None = None
    # what the figures need said, for the record's message (ddp: every rank's peak)
    note: str | None = None


@dataclass(frozen=True)
class MaxBatch:
    """A max-batch search (`revbench.maxbatch`): the largest batch within the cell's budget.

    The search's record has batch_size 0 and these columns; its memory columns stay empty,
    so the largest batch's figures cannot be mistaken for a batch-0 cell's.
    """

    max_batch: int | None = None  # 0: batch 1 does not fit
    max_batch_peak_bytes: int | None = None  # at max_batch: estimated, or allocated (cuda)
    max_batch_reserved_bytes: int | None = None  # cuda: peak reserved at max_batch
    max_batch_alloc_retries: int | None = None  # cuda: num_alloc_retries at max_batch
    next_batch_peak_bytes: int | None = None  # estimate: the peak at max_batch + 1
    first_failed_batch: int | None = None  # smallest batch tried that did not fit; None: capped
    first_failed_status: str | None = None  # "oom" (cuda) or "over budget" (estimate)
    estimated_max_batch: int | None = None  # cuda: the estimator's answer, the search's seed
    estimated_peak_bytes: int | None = None  # cuda: the estimator's peak at max_batch
    probes: int | None = None  # batches tried


def timed(times_ms: list[float], batch_size: int) -> Measurement:
    """Median, inter-quartile range and min of step times, and throughput at the median."""
    median = statistics.median(times_ms)
    if len(times_ms) >= 2:
        q1, _, q3 = statistics.quantiles(times_ms, n=4, method="inclusive")
        iqr = q3 - q1
    else:
        iqr = 0.0
    return Measurement(
        step_time_ms_median=median,
        step_time_ms_iqr=iqr,
        step_time_ms_min=min(times_ms),
        throughput_samples_per_s=batch_size / (median / 1000.0) if median > 0 else None,
        measure_steps=len(times_ms),
    )
