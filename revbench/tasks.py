"""Tasks: what a step feeds a model, what it compares the outputs with, and its loss.

A registered model serves one task (`revbench.models.ModelInfo`); suite expansion checks
that every cell's task is one revbench can run and is the model's, before anything runs.
Detection and segmentation register here beside classification.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class Task(ABC):
    """Inputs, targets and loss of one kind of model output."""

    name: str

    @abstractmethod
    def make_batch(
        self, model: nn.Module, batch_size: int, resolution: int, device: torch.device
    ) -> tuple[Any, Any]:
        """(inputs, targets) of one batch on `device`; `inputs` is what the model is called on."""

    @abstractmethod
    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        """A scalar loss of the model's outputs."""


class Classify(Task):
    """Images to logits, cross-entropy against uniformly drawn labels."""

    name = "classify"

    def make_batch(self, model, batch_size, resolution, device):
        num_classes = getattr(model, "num_classes", None)
        if not num_classes:
            raise ValueError(
                f"{type(model).__name__} has no num_classes; the classify task draws its "
                "targets from it"
            )
        images = torch.randn(batch_size, 3, resolution, resolution, device=device)  # (B, 3, R, R)
        targets = torch.randint(0, num_classes, (batch_size,), device=device)  # (B,)
        return images, targets

    def loss(self, outputs, targets):
        # The loss in fp32, as mixed-precision recipes do.
        return F.cross_entropy(outputs.float(), targets)  # outputs: (B, num_classes)


_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    if task.name in _TASKS:
        raise ValueError(f"task {task.name!r} is registered twice")
    _TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    try:
        return _TASKS[name]
    except KeyError:
        raise ValueError(f"task {name!r} is invalid; valid: {', '.join(_TASKS)}") from None


def task_names() -> tuple[str, ...]:
    return tuple(_TASKS)


register_task(Classify())
