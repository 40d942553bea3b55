"""The step every measurement method runs: one training or inference iteration.

All methods (cuda, estimate, cpu) build the same `Step`, so their figures are comparable
cell by cell. The cell's task decides the inputs, the targets and the loss; a training
step is forward + loss + backward + optimizer step, split into phases so the cuda method
can attribute peak memory to each.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from revbench.models import create

from .axes import OPTIMIZERS, PRECISIONS, SCENARIOS, cell_ddp
from .cell import Cell
from .ddp import unused_parameters, wrap
from .tasks import Task, get_task

_AMP_DTYPES = {"amp-bf16": torch.bfloat16, "amp-fp16": torch.float16}


def make_optimizer(name: str, params, foreach: bool | None = None) -> torch.optim.Optimizer:
    """`foreach`: None lets PyTorch choose the implementation by device, as a user's code
    does (multi-tensor on CUDA, per parameter on the CPU); the estimator for a card sets it."""
    if name == "sgd":
        # SGD with momentum keeps one state tensor per parameter (the momentum buffer).
        return torch.optim.SGD(params, lr=0.01, momentum=0.9, foreach=foreach)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, foreach=foreach)
    raise ValueError(f"optimizer {name!r} is invalid; valid: {', '.join(OPTIMIZERS)}")


@dataclass
class Step:
    """One iteration of a scenario on a built model, phase by phase.

    Call `forward()`, then `backward()`, then `optimizer_step()`; or `run()` for all
    three. Inference runs only `forward()` (under inference_mode).
    """

    model: nn.Module
    task: Task
    inputs: Any  # what the model is called on: (B, 3, R, R) images for classify
    targets: Any
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
                self.model(self.inputs)
            return
        with self._autocast():
            outputs = self.model(self.inputs)
        self._loss = self.task.loss(outputs, self.targets)

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
    task: str = "classify",
    scenario: str,
    precision: str,
    batch_size: int,
    resolution: int,
    device: torch.device | str,
    optimizer: str = "sgd",
    foreach: bool | None = None,
) -> Step:
    """Inputs, targets, loss and optimizer of `task` for `model` (already on `device`);
    `foreach` picks the optimizer's implementation (`make_optimizer`)."""
    device = torch.device(device)
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario {scenario!r} is invalid; valid: {', '.join(SCENARIOS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is invalid; valid: {', '.join(PRECISIONS)}")
    the_task = get_task(task)
    model.train(scenario == "train")
    inputs, targets = the_task.make_batch(model, batch_size, resolution, device)
    opt = make_optimizer(optimizer, model.parameters(), foreach) if scenario == "train" else None
    # fp16 needs loss scaling on a real GPU; bf16 does not.
    scaler = (
        torch.amp.GradScaler("cuda")
        if precision == "amp-fp16" and scenario == "train" and device.type == "cuda"
        else None
    )
    return Step(
        model=model,
        task=the_task,
        inputs=inputs,
        targets=targets,
        scenario=scenario,
        precision=precision,
        autocast_device="cuda" if device.type == "cuda" else "cpu",
        optimizer=opt,
        scaler=scaler,
    )


def build_model(cell: Cell) -> nn.Module:
    """The cell's model, built on the current default device."""
    overrides = {**dict(cell.overrides), "img_size": cell.resolution, "mode": cell.mode}
    return create(cell.model, **overrides)


# Weight initialisers on meta tensors: no values to fill, but their meta kernels are Python
# references (normal_ 0.35 ms, clamp_ 1 ms a call; RevCol-T's trunc_normal_ inits took 0.25
# of a 0.32 s build). In place, they leave shape, strides and dtype as they are.
_INITIALISERS = {
    torch.Tensor.normal_,
    torch.Tensor.uniform_,
    torch.Tensor.random_,
    torch.Tensor.bernoulli_,
    torch.Tensor.exponential_,
    torch.Tensor.geometric_,
    torch.Tensor.log_normal_,
    torch.Tensor.cauchy_,
    torch.Tensor.erfinv_,
    torch.Tensor.clamp_,
    torch.Tensor.clamp_min_,
    torch.Tensor.clamp_max_,
    torch.clamp_,
}


class _SkipMetaInit(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _INITIALISERS and args and getattr(args[0], "is_meta", False):
            return args[0]
        return func(*args, **(kwargs or {}))


def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """`factory()`'s model on the meta device (shapes without storage), its in-place
    initialisers skipped: a meta tensor has no values for them to set."""
    with torch.device("meta"), _SkipMetaInit():
        return factory()


def step_for(cell: Cell, model: nn.Module, device: torch.device | str) -> Step:
    """The cell's step on `model` (already on `device`)."""
    return build_step(
        model,
        task=cell.task,
        scenario=cell.scenario,
        precision=cell.precision,
        batch_size=cell.batch_size,
        resolution=cell.resolution,
        device=device,
        optimizer=cell.optimizer,
    )


def cell_step(cell: Cell, device: torch.device | str) -> Step:
    """The cell's model built on `device` and its step: what the real-run methods time.

    A `ddp-N` cell's step runs on one rank of a process group (`revbench.ddp.run_ranks`):
    the train step with the model under DistributedDataParallel, the same weights on every
    rank (DDP broadcasts rank 0's anyway) and each rank its own batch."""
    config = cell_ddp(cell)
    if config is None:
        with torch.device(device):
            model = build_model(cell)
        return step_for(cell, model, device)
    import torch.distributed as dist

    if not dist.is_initialized():
        raise RuntimeError(f"{cell.scenario} runs on ranks: launch it through revbench.ddp")
    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(cell)
    torch.manual_seed(1 + dist.get_rank())
    step = step_for(replace(cell, scenario="train"), model, device)
    step.model = wrap(model, torch.device(device), config, unused_parameters(model, step))
    return step
