"""The `estimate` method for detection and segmentation: real CPU tensors under MemTracker.

Why not fake tensors, as for classification. torchvision's detectors decide sizes from
data: the RPN keeps the proposals that survive NMS (at most `post_nms_top_n`, 2000 per
image in training), the box sampler draws RoIs with `torch.where` over IoU matches (at most
512 per image, a quarter positive), the mask head runs on the positive RoIs only. Fake
tensors refuse those operators (`DataDependentOutputException`). Pinning each count to its
upper bound would mean replacing a dozen torchvision internals (NMS, matcher, sampler,
box coder, mask projection) with fixed-size stand-ins, and would give a bound whose
distance from the real figure is unknown (the positives that size the mask head are far
below their bound of 128 per image).

So the step runs for real, on CPU tensors at the cell's true size, under the same
MemTracker and CUDA rounding as the fake-tensor path (`estimate._PeakTracker`,
`estimate._cuda_rounding`): every storage is counted from its allocation to its release,
and the data-dependent counts are the ones the real step produces. It is exact for the
tensors the step holds (what `torch.cuda.max_memory_allocated` sees, less kernel
workspaces), and deterministic: weights, images and targets come from fixed seeds, the RNG
is reseeded before the tracked step (the RoI sampler's draws), and CPU kernels give the
same values run after run, so the same proposals survive and the same bytes come out.

Cost is the compute of one step on the CPU. The warm-up step, which only has to create the
optimizer state (momentum buffers, sized by the weights, not the images), runs at batch 1
and the smallest resolution; the tracked step runs at the cell's size. Faster R-CNN with
RevBiFPN-S3 at 1333x800, 2 images: about a minute on one core.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..scenario import build_step
from .estimate import CATEGORIES, MemoryEstimate, _cuda_rounding, _PeakTracker

SEED = 0


class _NoHook:
    def remove(self) -> None:
        pass


class _DenseTracker(_PeakTracker):
    """The peak tracker, for a model with frozen parameters (ResNet-FPN's stem and layer1):
    MemTracker hooks every parameter's gradient, which a frozen one refuses; they get none."""

    def __init__(self, model: nn.Module):
        super().__init__()
        for p in model.parameters():
            if not p.requires_grad:
                self._param_to_grad_hook_handles[p] = (_NoHook(), _NoHook())


def estimate_dense_memory(
    factory: Callable[[], nn.Module],
    *,
    task: str,
    batch_size: int,
    resolution: int,
    warmup_resolution: int,
    scenario: str = "train",
    precision: str = "fp32",
    optimizer: str = "sgd",
) -> MemoryEstimate:
    """Peak memory of one steady-state step of a detector, by category (see module doc).

    `factory` builds the model (on the CPU, at `resolution`); `warmup_resolution` is the
    smallest side it takes, for the warm-up step.
    """
    torch.manual_seed(SEED)
    net = factory()
    common = dict(task=task, scenario=scenario, precision=precision, device="cpu")
    with _cuda_rounding():
        step = build_step(
            net, batch_size=batch_size, resolution=resolution, optimizer=optimizer, **common
        )
        if scenario == "train":
            warmup = build_step(
                net, batch_size=1, resolution=warmup_resolution, optimizer=optimizer, **common
            )
            warmup.run()  # creates the optimizer state
            step.optimizer = warmup.optimizer
            del warmup
        torch.manual_seed(SEED)
        tracker = _DenseTracker(net)
        # Registered after the warm-up: state created before track_external is not
        # attributed to its category otherwise. The batch (images, targets, masks) lives
        # on the GPU in a real run: it counts, as "other".
        tracker.track_external(net, *([step.optimizer] if step.optimizer else []), step.inputs)
        with tracker:
            step.run()
        snapshot = tracker.get_tracker_snapshot("peak")
    (device_snapshot,) = snapshot.values()
    by_category = {name: 0 for name in CATEGORIES.values()}
    total = 0
    for key, nbytes in device_snapshot.items():
        if key == "Total":
            total = int(nbytes)
        else:
            by_category[CATEGORIES[key.name]] = int(nbytes)
    return MemoryEstimate(peak_bytes=total, by_category=by_category)
