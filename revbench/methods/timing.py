"""Summaries of per-step times shared by the real-run methods."""

from __future__ import annotations

import statistics


def summarize_times(times_ms: list[float], batch_size: int) -> dict:
    """Median, inter-quartile range and min of step times, and throughput at the median."""
    median = statistics.median(times_ms)
    if len(times_ms) >= 2:
        q1, _, q3 = statistics.quantiles(times_ms, n=4, method="inclusive")
        iqr = q3 - q1
    else:
        iqr = 0.0
    return {
        "step_time_ms_median": median,
        "step_time_ms_iqr": iqr,
        "step_time_ms_min": min(times_ms),
        "throughput_samples_per_s": batch_size / (median / 1000.0) if median > 0 else None,
        "measure_steps": len(times_ms),
    }
