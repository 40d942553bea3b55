"""The `estimate` method: peak training memory without a GPU.

The model and its inputs are built under FakeTensorMode (CPU fake tensors carry shapes
and dtypes but allocate nothing), then the same step sequence as the cuda method runs
under torch's MemTracker: a warm-up step first, so optimizer state exists and the tracked
step is the steady state, then one tracked step. Every tensor alive at the peak is
attributed to a category. The result is deterministic: the same cell gives the same bytes
on every run and machine, so it can be gated exactly.

Why fake CPU tensors rather than the meta device: autocast does not apply to meta
tensors, so amp precisions could not be estimated there. Sizes are rounded as CUDA's
caching allocator rounds them (512-byte blocks), so figures read as CUDA bytes. Autocast
makes CUDA's casts, not the CPU's (`revbench.autocast_policy`): layer and group norm,
softmax and the losses run in float32 as on a GPU.

Three memory kinds come out: the allocated peak (`peak_bytes`, MemTracker: bytes in live
tensors), and, from the same step's allocation and free events replayed through the
caching-allocator model (`revbench.allocator`), the reserved peak and the fragmentation at
it. The two agree on the tensors: the largest sum of live blocks in the recorded events is
`peak_bytes` exactly; the model's own allocated peak can be a little higher, because c10
hands out a cached large block whole (and counts it allocated) when the rest would be
1 MiB or less.

Attribution at the peak follows MemTracker: a gradient counts as `gradients` once it is
accumulated into `.grad`; one still being produced when the peak occurs counts as a
temporary. The total is exact either way.

Detection and segmentation cells with torchvision's data-dependent detectors run on real CPU
tensors instead (estimate_dense.py, `on_real_tensors`); EfficientDet's training step runs
here, its inference (NMS) there.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools import mem_tracker as _mt
from torch.utils._pytree import tree_leaves

from revbench.models import create, get_info

from ..allocator import AllocationRecorder, AllocatorStats, Event, simulate
from ..autocast_policy import cuda_cast_policy
from ..cell import Cell
from ..ddp import DdpBuckets, DdpConfig, cell_ddp
from ..measurement import Measurement
from ..scenario import build_model, build_step
from ..tasks import get_task
from ..trackers import PeakOnlyMemTracker
from .base import Method


def on_real_tensors(cell: Cell) -> bool:
    """Whether the cell's step sizes tensors from data (NMS, sampling), which fake tensors
    refuse: then it is estimated on real tensors (estimate_dense.py). The task says which
    of its scenarios are shaped by the batch alone (`Task.shape_only_scenarios`); a
    data-parallel step is a train step."""
    scenario = "train" if cell_ddp(cell) else cell.scenario
    return scenario not in get_task(cell.task).shape_only_scenarios


CUDA_BLOCK_BYTES = 512  # CUDA caching allocator's smallest block and rounding unit

# MemTracker's reference types, in the names revbench records use.
CATEGORIES = {
    "PARAM": "parameters",
    "BUFFER": "buffers",
    "GRAD": "gradients",
    "ACT": "activations",
    "TEMP": "temporaries",
    "OPT": "optimizer_state",
    "OTH": "other",
}


@dataclass(frozen=True)
class MemoryEstimate:
    peak_bytes: int
    by_category: dict[str, int]  # bytes per category at the moment of the peak; sums to peak
    # The caching-allocator model (revbench.allocator) replaying the tracked step's
    # allocations and frees; None where no trace was recorded.
    reserved: AllocatorStats | None = None
    events: tuple[Event, ...] = ()  # the tracked step's allocator events, live tensors first

    @property
    def peak_reserved_bytes(self) -> int | None:
        return None if self.reserved is None else self.reserved.peak_reserved_bytes

    @property
    def fragmentation_bytes(self) -> int | None:
        return None if self.reserved is None else self.reserved.fragmentation_bytes

    @property
    def activation_bytes(self) -> int:
        return self.by_category["activations"] + self.by_category["temporaries"]


@contextlib.contextmanager
def _cuda_rounding() -> Iterator[None]:
    # MemTracker rounds storages to 512 bytes only for tensors on a CUDA device; our fake
    # tensors live on the CPU, so apply the allocator's rounding to every storage here.
    cls = _mt._WeakRefInfo
    original = cls._calculate_mem_consumed

    def rounded(self) -> int:
        nbytes = self.size * self.element_size
        return math.ceil(nbytes / CUDA_BLOCK_BYTES) * CUDA_BLOCK_BYTES

    cls._calculate_mem_consumed = rounded
    try:
        yield
    finally:
        cls._calculate_mem_consumed = original


def estimate_memory(
    model: str | Callable[[], nn.Module],
    *,
    batch_size: int,
    resolution: int,
    scenario: str = "train",
    precision: str = "fp32",
    optimizer: str = "sgd",
    task: str = "classify",
    predict_reserved: bool = True,
    ddp: DdpConfig | None = None,
    **overrides,
) -> MemoryEstimate:
    """Peak memory of one steady-state step of `model`, by category.

    `model` is a registered name (built with `img_size=resolution` and `overrides`) or a
    zero-argument factory returning a module that serves `task` (for classify: (B, 3, R, R)
    images to logits, with a `num_classes` attribute). `predict_reserved` records the step's
    allocations and frees and replays them through the caching-allocator model
    (`revbench.allocator`) for the reserved peak; False skips it (allocated peak only).
    `ddp`: one rank of a data-parallel train step, DDP's gradient buckets included
    (revbench.ddp).
    """
    if isinstance(model, str):
        name = model

        def factory() -> nn.Module:
            return create(name, img_size=resolution, **overrides)
    else:
        if overrides:
            raise ValueError("overrides apply only when the model is given by name")
        factory = model

    # Built on the meta device first: model constructors may read values (`.item()` on
    # a linspace of drop-path rates), which fake tensors refuse; to_empty then gives the
    # weights fake CPU storage.
    with torch.device("meta"):
        net = factory()
    with FakeTensorMode(allow_non_fake_inputs=True), _cuda_rounding(), amp_policy(precision):
        net = net.to_empty(device="cpu")
        step = build_step(
            net,
            task=task,
            scenario=scenario,
            precision=precision,
            batch_size=batch_size,
            resolution=resolution,
            device="cpu",
            optimizer=optimizer,
        )
        buckets = DdpBuckets(net, ddp) if ddp else None  # records the gradients' ready order
        step.run()  # warm-up: creates optimizer state, as the cuda method's warm-up does
        tracker = PeakOnlyMemTracker()
        # Registered after the warm-up: state created before track_external is not
        # attributed to its category otherwise. The batch (images, targets) lives on the
        # GPU in a real run, so it counts ("other").
        tracker.track_external(
            net, *([step.optimizer] if step.optimizer else []), step.inputs, step.targets
        )
        recorder = AllocationRecorder() if predict_reserved else contextlib.nullcontext()
        with tracker, recorder, buckets.alive() if buckets else contextlib.nullcontext():
            if predict_reserved:
                recorder.track(*live_tensors(net, step))
            step.run()
        snapshot = tracker.get_tracker_snapshot("peak")
    events = tuple(recorder.events) if predict_reserved else ()
    reserved = simulate(events) if predict_reserved else None
    (device_snapshot,) = snapshot.values()
    by_category = {name: 0 for name in CATEGORIES.values()}
    total = 0
    for key, nbytes in device_snapshot.items():
        if key == "Total":
            total = int(nbytes)
        else:
            by_category[CATEGORIES[key.name]] = int(nbytes)
    return MemoryEstimate(
        peak_bytes=total, by_category=by_category, reserved=reserved, events=events
    )


def amp_policy(precision: str) -> contextlib.AbstractContextManager:
    """CUDA's autocast casts for an amp precision on CPU tensors; nothing for fp32."""
    return cuda_cast_policy() if precision != "fp32" else contextlib.nullcontext()


def live_tensors(net: nn.Module, step) -> list[torch.Tensor]:
    """What a GPU holds when a steady-state step starts, in the order a real run allocated
    it: each module's parameters and buffers (construction order), the batch, then the
    optimizer state (created in the first step, parameter by parameter)."""
    tensors: list[torch.Tensor] = []
    for module in net.modules():
        tensors.extend(module.parameters(recurse=False))
        tensors.extend(module.buffers(recurse=False))
    tensors.extend(
        t for t in tree_leaves((step.inputs, step.targets)) if isinstance(t, torch.Tensor)
    )
    if step.optimizer is not None:
        for group in step.optimizer.param_groups:
            for p in group["params"]:
                state = step.optimizer.state.get(p, {})
                tensors.extend(v for v in state.values() if isinstance(v, torch.Tensor))
    return tensors


class EstimateMethod(Method):
    """The estimate method for one cell (see `estimate_memory`)."""

    name = "estimate"

    def measure(self, cell: Cell, snapshot_path: Path | None = None) -> Measurement:
        if on_real_tensors(cell):  # data-dependent detectors: real tensors, see the module
            from .estimate_dense import estimate_dense_memory

            with amp_policy(cell.precision):
                est = estimate_dense_memory(
                    lambda: build_model(cell),
                    task=cell.task,
                    batch_size=cell.batch_size,
                    resolution=cell.resolution,
                    warmup_resolution=get_info(cell.model).min_resolution,
                    scenario=cell.scenario,
                    precision=cell.precision,
                    optimizer=cell.optimizer,
                )
            return _measurement(est)
        ddp = cell_ddp(cell)
        est = estimate_memory(
            lambda: build_model(cell),
            batch_size=cell.batch_size,
            resolution=cell.resolution,
            scenario="train" if ddp else cell.scenario,
            ddp=ddp,
            precision=cell.precision,
            optimizer=cell.optimizer,
            task=cell.task,
        )
        return _measurement(est)


def _measurement(est: MemoryEstimate) -> Measurement:
    return Measurement(
        peak_bytes=est.peak_bytes,
        peak_reserved_bytes=est.peak_reserved_bytes,
        fragmentation_bytes=est.fragmentation_bytes,
        **{f"mem_{name}_bytes": nbytes for name, nbytes in est.by_category.items()},
    )
