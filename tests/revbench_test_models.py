"""Test-only models, registered through REVBENCH_PLUGINS so subprocess workers see them too."""

from __future__ import annotations

import torch
from torch import nn

from revbench.models import register_model


class TinyCNN(nn.Module):
    def __init__(self, width: int = 8, num_classes: int = 10):
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


class OOMProbe(TinyCNN):
    """Raises CUDA's out-of-memory error for batches larger than `oom_above`."""

    def __init__(self, oom_above: int = 1):
        super().__init__()
        self.oom_above = oom_above

    def forward(self, x):
        if x.shape[0] > self.oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return super().forward(x)


@register_model(family="Test", kind="baseline", size="tiny", native_resolution=32)
def test_tiny_cnn(img_size: int | None = None, mode: str = "vanilla", **overrides) -> nn.Module:
    return TinyCNN(**overrides)


@register_model(family="Test", kind="baseline", size="oom", native_resolution=32)
def test_oom_probe(img_size: int | None = None, mode: str = "vanilla", **overrides) -> nn.Module:
    return OOMProbe(**overrides)


@register_model(
    family="Test", kind="baseline", size="crash", native_resolution=32, resolution_multiple=16
)
def test_crash(img_size: int | None = None, mode: str = "vanilla") -> nn.Module:
    raise RuntimeError("constructor failed on purpose")
