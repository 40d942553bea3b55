"""The step every measurement method runs: one training or inference iteration.

All methods (cuda, estimate, cpu) build the same `Step`, so their figures are comparable
cell by cell. A training step is forward + cross-entropy loss + backward + optimizer step,
split into phases so the cuda method can attribute peak memory to each.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SCENARIOS = ("train", "infer")
PRECISIONS = ("fp32", "amp-bf16", "amp-fp16")
OPTIMIZERS = ("sgd", "adamw")

_AMP_DTYPES = {"amp-bf16": torch.bfloat16, "amp-fp16": torch.float16}


def make_optimizer(name: str, params) -> torch.optim.Optimizer:
    if name == "sgd":
        # SGD with momentum keeps one state tensor per parameter (the momentum buffer).
        return torch.optim.SGD(params, lr=0.01, momentum=0.9)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)
    raise ValueError(f"optimizer {name!r} is invalid; valid: {', '.join(OPTIMIZERS)}")


@dataclass
class Step:
    """One iteration of a scenario on a built model, phase by phase.

    Call `forward()`, then `backward()`, then `optimizer_step()`; or `run()` for all
    three. Inference runs only `forward()` (under inference_mode).
    """

    model: nn.Module
    images: torch.Tensor  # (B, 3, R, R)
    targets: torch.Tensor  # (B,)
    scenario: str
    precision: str
    autocast_device: str  # device type autocast applies to ("cuda" or "cpu")
    optimizer: torch.optim.Optimizer | None = None
    scaler: torch.amp.GradScaler | None = None
    _loss: torch.Tensor | None = None

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.autocast_device, dtype=_AMP_DTYPES[self.precision])

    def forward(self) -> None:
        if self.scenario == "infer":
            with torch.inference_mode(), self._autocast():
                self.model(self.images)
            return
        with self._autocast():
            logits = self.model(self.images)  # (B, num_classes)
        # The loss in fp32, as mixed-precision recipes do.
        self._loss = F.cross_entropy(logits.float(), self.targets)

    def backward(self) -> None:
        if self.scenario == "infer":
            return
        loss, self._loss = self._loss, None
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward()

    def optimizer_step(self) -> None:
        if self.scenario == "infer":
            return
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        # Gradients are freed between steps, as in an ordinary training loop.
        self.optimizer.zero_grad(set_to_none=True)

    def run(self) -> None:
        self.forward()
        self.backward()
        self.optimizer_step()


def build_step(
    model: nn.Module,
    *,
    scenario: str,
    precision: str,
    batch_size: int,
    resolution: int,
    device: torch.device | str,
    optimizer: str = "sgd",
    num_classes: int | None = None,
) -> Step:
    """Inputs, loss and optimizer for `model` (already on `device`).

    Targets are drawn from `num_classes`, by default the model's own `num_classes`.
    """
    device = torch.device(device)
    num_classes = num_classes or getattr(model, "num_classes", None) or 1000
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario {scenario!r} is invalid; valid: {', '.join(SCENARIOS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is invalid; valid: {', '.join(PRECISIONS)}")
    model.train(scenario == "train")
    images = torch.randn(batch_size, 3, resolution, resolution, device=device)
    targets = torch.randint(0, num_classes, (batch_size,), device=device)
    opt = make_optimizer(optimizer, model.parameters()) if scenario == "train" else None
    # fp16 needs loss scaling on a real GPU; bf16 does not.
    scaler = (
        torch.amp.GradScaler("cuda")
        if precision == "amp-fp16" and scenario == "train" and device.type == "cuda"
        else None
    )
    return Step(
        model=model,
        images=images,
        targets=targets,
        scenario=scenario,
        precision=precision,
        autocast_device="cuda" if device.type == "cuda" else "cpu",
        optimizer=opt,
        scaler=scaler,
    )
