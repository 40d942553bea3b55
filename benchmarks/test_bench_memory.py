"""Training step of each reversible family's smallest model in every mode (pytest-benchmark),
with the estimator's peak memory for the same step in `extra_info`.

pytest-benchmark times the step on the CPU; the memory figures ride along in the saved
JSON, so `--benchmark-compare` shows time and the saved runs keep memory. Not part of the
default test run (benchmarks/ is outside testpaths):

    python -m pytest benchmarks/test_bench_memory.py --benchmark-only --benchmark-autosave
    python -m pytest benchmarks/test_bench_memory.py --benchmark-only --benchmark-compare

Models come from the registry: a family that registers appears here with no change.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from revbench.methods.estimate import estimate_memory
from revbench.models import ModelInfo, create, list_models

# Small enough for a CPU step in about a second; the modes' memory already differs here.
RESOLUTION, BATCH = 128, 4
NUM_CLASSES = 1000  # the registered models' head, as the estimate sees it


def smallest_per_family() -> list[ModelInfo]:
    smallest: dict[str, ModelInfo] = {}
    for info in list_models(kind="reversible"):
        best = smallest.get(info.family)
        if best is None or (info.published_params or 0) < (best.published_params or 0):
            smallest[info.family] = info
    return list(smallest.values())


def resolution_for(info: ModelInfo) -> int:
    """RESOLUTION, or the nearest side above it the model takes."""
    m = info.resolution_multiple
    return -(-max(RESOLUTION, info.min_resolution) // m) * m


CASES = [(info, mode) for info in smallest_per_family() for mode in info.modes]


@pytest.mark.parametrize("info, mode", CASES, ids=[f"{info.name}-{mode}" for info, mode in CASES])
def test_train_step(benchmark, info: ModelInfo, mode: str) -> None:
    resolution = resolution_for(info)
    estimate = estimate_memory(info.name, batch_size=BATCH, resolution=resolution, mode=mode)
    torch.manual_seed(0)
    model = create(info.name, img_size=resolution, mode=mode).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(BATCH, 3, resolution, resolution)
    targets = torch.randint(0, NUM_CLASSES, (BATCH,))

    def step() -> None:
        loss = F.cross_entropy(model(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    benchmark.group = f"{info.family}-train-step"
    benchmark.extra_info.update(
        model=info.name,
        mode=mode,
        resolution=resolution,
        batch_size=BATCH,
        estimated_peak_bytes=estimate.peak_bytes,
        **{f"estimated_{name}_bytes": nbytes for name, nbytes in estimate.by_category.items()},
    )
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    assert all(p.grad is None for p in model.parameters())  # the step ran to completion
