"""What measuring a cell yields: counts of the model and a method's measurement.

Units are in the field names; None means not measured. The field names are the record's
columns (`revbench.results.Record` has every one of them), so a method fills a typed
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

    # memory: peak over the step. cuda: allocator peaks; estimate: MemTracker's peak.
    peak_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    forward_peak_bytes: int | None = None
    backward_peak_bytes: int | None = None
    optimizer_peak_bytes: int | None = None
    # the estimator's breakdown at the peak (MEMORY_CATEGORIES); sums to peak_bytes
    mem_parameters_bytes: int | None = None
    mem_buffers_bytes: int | None = None
    mem_gradients_bytes: int | None = None
    mem_activations_bytes: int | None = None
    mem_temporaries_bytes: int | None = None
    mem_optimizer_state_bytes: int | None = None
    mem_other_bytes: int | None = None
    # time over the measured steps (cuda: CUDA events; cpu: perf_counter)
    step_time_ms_median: float | None = None
    step_time_ms_iqr: float | None = None
    step_time_ms_min: float | None = None
    throughput_samples_per_s: float | None = None
    measure_steps: int | None = None
    snapshot_file: str | None = None  # the allocator history, next to the results


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
