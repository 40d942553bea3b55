"""Seconds per estimate (pytest-benchmark): a direct estimate (build, one tracked step)
against one extrapolated from a model's two traced batch sizes and one answered from the
estimate cache, and a model's three batch sizes as a suite lists them (three direct
estimates before; one estimator now).

    python -m pytest benchmarks/test_bench_estimate.py --benchmark-only

Small layouts keep the run near a minute; the ratio is what carries over to full size,
where a tracked step costs seconds.
"""

from __future__ import annotations

import itertools

import pytest

from revbench.methods.estimate import StepEstimator, estimate_memory, model_factory

# model, resolution, overrides
MODELS = {
    "vit": ("vit_small_patch16_224", 32, dict(depth=2, embed_dim=32, num_heads=2)),
    "resnet": ("resnet50", 32, dict(layers=(1, 1, 1, 1))),
    "revvit": ("revvit_small", 32, dict(depth=2, embed_dim=16, num_heads=2, patch_size=8)),
}
SUITE_BATCHES = (8, 16, 32)


def _estimator(key: str) -> StepEstimator:
    name, resolution, overrides = MODELS[key]
    return StepEstimator(model_factory(name, resolution, overrides), resolution=resolution)


@pytest.mark.parametrize("key", MODELS)
def test_direct(benchmark, key):
    name, resolution, overrides = MODELS[key]
    benchmark.group = f"{key}-one-estimate"
    benchmark.pedantic(
        lambda: estimate_memory(name, batch_size=8, resolution=resolution, **overrides),
        rounds=3,
        warmup_rounds=1,
    )


@pytest.mark.parametrize("key", MODELS)
def test_extrapolated(benchmark, key):
    estimator = _estimator(key)
    estimator.estimate(2)
    estimator.estimate(3)
    steps = estimator.steps_run
    batches = itertools.count(4)  # a new batch size each round: nothing cached

    benchmark.group = f"{key}-one-estimate"
    benchmark.pedantic(lambda: estimator.estimate(next(batches)), rounds=10, warmup_rounds=1)
    assert estimator.steps_run == steps  # extrapolated, no step run


@pytest.mark.parametrize("key", MODELS)
def test_suite_batches_direct(benchmark, key):
    name, resolution, overrides = MODELS[key]

    def three() -> None:
        for batch in SUITE_BATCHES:
            estimate_memory(name, batch_size=batch, resolution=resolution, **overrides)

    benchmark.group = f"{key}-three-batch-sizes"
    benchmark.pedantic(three, rounds=2)


@pytest.mark.parametrize("key", MODELS)
def test_suite_batches_estimator(benchmark, key):
    def three() -> None:
        estimator = _estimator(key)
        for batch in SUITE_BATCHES:
            estimator.estimate(batch)

    benchmark.group = f"{key}-three-batch-sizes"
    benchmark.pedantic(three, rounds=2)


@pytest.mark.parametrize("key", MODELS)
def test_cached(benchmark, key, tmp_path):
    from revbench.estimate_cache import EstimateCache
    from revbench.methods.estimate_method import EstimateMethod
    from revbench.suite import make_cell

    name, resolution, overrides = MODELS[key]
    cell = make_cell(name, resolution=resolution, batch_size=8, overrides=overrides)
    cache = EstimateCache(tmp_path)
    measured = EstimateMethod().measure(cell)
    cache.put_measurement(cell, measured)

    benchmark.group = f"{key}-one-estimate"
    got = benchmark.pedantic(lambda: cache.get_measurement(cell), rounds=10, warmup_rounds=1)
    assert got == measured  # the same figures, without a step
