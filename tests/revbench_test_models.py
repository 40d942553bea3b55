"""Test-only models, registered through REVBENCH_PLUGINS so subprocess workers see them too.

They register exactly as a user's plugin would: a config derived from `ModelConfig` and
`register_model`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from revbench.models import ModelConfig, register_model


@dataclass(frozen=True, kw_only=True)
class TinyConfig(ModelConfig):
    img_size: int = 32
    num_classes: int = 10
    width: int = 8
    oom_above: int = 1  # OOMProbe only


@dataclass(frozen=True, kw_only=True)
class CrashConfig(ModelConfig):
    img_size: int = 32

    @property
    def resolution_multiple(self) -> int:
        return 16


class TinyCNN(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.num_classes = cfg.num_classes
        width = cfg.width
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(width, cfg.num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


class OOMProbe(TinyCNN):
    """Raises CUDA's out-of-memory error for batches larger than `oom_above`."""

    def __init__(self, cfg: TinyConfig):
        super().__init__(cfg)
        self.oom_above = cfg.oom_above

    def forward(self, x):
        if x.shape[0] > self.oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return super().forward(x)


def crash(cfg: CrashConfig) -> nn.Module:
    raise RuntimeError("constructor failed on purpose")


register_model("test_tiny_cnn", TinyConfig(), family="Test", size="tiny", builder=TinyCNN)
register_model("test_oom_probe", TinyConfig(), family="Test", size="oom", builder=OOMProbe)
register_model("test_crash", CrashConfig(), family="Test", size="crash", builder=crash)


def which_card(cfg: TinyConfig) -> nn.Module:
    # Fails on purpose, naming the card its process was pinned to: the row's message shows
    # which worker (--gpus) ran the cell, with no GPU on the machine.
    raise RuntimeError(f"pinned to CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}")


register_model("test_which_card", TinyConfig(), family="Test", size="card", builder=which_card)
