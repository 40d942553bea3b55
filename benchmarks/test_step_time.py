"""Time of one training step of a small RevViT in each execution mode (pytest-benchmark).

Reversible and checkpoint modes recompute the forward during backward, so a step costs
about 4/3 of vanilla's (forward 1, backward 2, recompute 1) or more. Not part of the
default test run (it lives outside tests/, and pyproject's addopts disable benchmarks);
run it with

    python -m pytest benchmarks/test_step_time.py -o addopts="" --benchmark-only

and compare the modes by their `mode` extra_info, e.g. with --benchmark-group-by=group.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from revbench.models import create

SMALL = dict(embed_dim=128, depth=6, num_heads=4, img_size=64, patch_size=8, num_classes=100)
BATCH = 8


@pytest.mark.parametrize("mode", ["vanilla", "reversible", "checkpoint"])
def test_train_step_time(benchmark, mode: str) -> None:
    torch.manual_seed(0)
    model = create("revvit_small", mode=mode, **SMALL).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(BATCH, 3, SMALL["img_size"], SMALL["img_size"])
    targets = torch.randint(0, SMALL["num_classes"], (BATCH,))

    def step() -> None:
        loss = F.cross_entropy(model(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: optimizer state and allocator pools exist before timing
    benchmark.group = "revvit-train-step"
    benchmark.extra_info["mode"] = mode
    benchmark.extra_info["config"] = {**SMALL, "batch_size": BATCH}
    benchmark.pedantic(step, rounds=20, warmup_rounds=2)
    assert all(p.grad is None for p in model.parameters())  # the step ran to completion
