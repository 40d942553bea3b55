"""The `estimate` method for detection and segmentation: a real CPU step, read off the allocator.

Why not fake tensors, as for classification. torchvision's detectors decide sizes from
data: the RPN keeps the proposals that survive NMS (at most `post_nms_top_n`, 2000 per
image in training), the box sampler draws RoIs with `torch.where` over IoU matches (at most
512 per image, a quarter positive), the mask head runs on the positive RoIs only. Fake
tensors refuse those operators (`DataDependentOutputException`). Pinning each count to its
upper bound would mean replacing a dozen torchvision internals (NMS, matcher, sampler,
box coder, mask projection) with fixed-size stand-ins, and would give a bound whose
distance from the real figure is unknown (the positives that size the mask head are far
below their bound of 128 per image).

So the step runs for real, on CPU tensors at the cell's true size, and the figure is read
off the CPU allocator's own record of that step (torch.profiler's memory events: every
allocation and free, with its address, in order, inside the operator that made it):

    peak = max over the record of ( resident + sum of the live allocations )

- resident: what exists before the step and lives through it: weights, buffers, optimizer
  state (a warm-up step creates it, so the tracked step is the steady state) and the batch.
- every size is rounded up to 512 bytes, as CUDA's caching allocator rounds blocks.
- allocations made and freed inside one operator (`aten::convolution_backward`'s oneDNN
  scratch, a sort's buffer inside NMS) are left out: they never exist as a tensor, they are
  the CPU kernel's workspace, their size depends on the CPU's thread count (per-thread
  buffers), and a GPU kernel has its own (cuDNN's). This is the fake-tensor estimate's
  definition too (it sees operators' outputs only), and it keeps the figure
  deterministic: the same on every machine and thread count.

Why the allocator's record and not MemTracker, as the fake-tensor path uses: MemTracker is a
TorchDispatchMode, and while any dispatch mode is active autograd treats every tensor as a
subclass (`at::isTensorSubclassLike`) and accumulates gradients out of place: where a
tensor feeds several consumers (the RPN head shared by five levels, every residual
junction), the sum gets a new buffer beside the old one instead of being added in place,
and some backward formulas (`index`'s) take out-of-place paths. The observed step then
allocates more than an unobserved one: +1.2% on ResNet-50-FPN Faster R-CNN at 128 px,
which is the error the earlier MemTracker-based version of this file had (+1.16% against
the allocator; -1.45% / -4.55% on RevBiFPN Faster / Mask R-CNN, where missing kernel
scratch and gradient buffers went the other way). The profiler observes without changing
what runs.

Categories at the peak: resident weights, buffers and optimizer state as such, the batch as
`other`; allocations made in the forward as `activations`; made in the backward and still
held as a parameter's `.grad` after it as `gradients`, the rest of the backward's as
`temporaries`; the optimizer step's as `optimizer_state`.

Accuracy (tests/test_detection.py, tiny Faster and Mask R-CNN on RevBiFPN-S0 at 128 px):
the estimate equals, byte for byte, the CPU allocator's record of the same step sampled
between operators, computed there from the profiler's flat event list without this file's
code. The complete record, kernels' workspaces included, is higher by the workspace live at
its peak: at 128 px, 2 images, one thread, 2.7% (RevBiFPN-S0 Faster R-CNN), 2.4% (Mask),
1.5% (HRNetV2p-W18 Mask), 0.2% (ResNet-50-FPN Faster), all of it inside
`aten::convolution_backward`. That residual is the CPU allocator's, not the estimator's: on
two threads the same step's complete record is 4.4 MB higher again (S0 Faster: workspace
6.9 MB on one thread, 11.3 MB on two), while the estimate does not move by a byte (the
test runs it on one and two threads). What a GPU adds (cuDNN workspace, CUDA kernels' own
temporaries, the CUDA context) is not estimated.

Deterministic: weights, images and targets come from fixed seeds, the RNG is reseeded
before the tracked step (the RoI sampler's draws), and CPU kernels give the same values run
after run, so the same proposals survive and the same bytes come out.

Cost is the compute of one step on the CPU plus the warm-up. The warm-up step only has to
create the optimizer state (momentum buffers, sized by the weights, not the images), so it
runs at batch 1 and the smallest resolution.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils._pytree import tree_flatten

from ..cards import DEFAULT_CARD
from ..scenario import build_step
from .cuda_terms import blas_kind_by_name, card_library, is_host_state, kept_workspaces
from .step_trace import CATEGORIES, CUDA_BLOCK_BYTES, MemoryEstimate

SEED = 0
_SCOPE = "revbench::"  # the record_function scopes that mark the step's phases


def cuda_bytes(nbytes: int) -> int:
    """`nbytes` rounded up as CUDA's caching allocator rounds a block."""
    return -(-nbytes // CUDA_BLOCK_BYTES) * CUDA_BLOCK_BYTES


@dataclass
class Allocation:
    """One allocation in the allocator's record and where it was freed."""

    nbytes: int  # rounded as CUDA rounds
    ptr: int
    phase: str | None  # forward / backward / optimizer
    operator: object | None  # the outermost operator it was made in (a profiler event)
    freed_phase: str | None = None
    freed: bool = False
    internal: bool = False  # made and freed inside one operator: a kernel's workspace


@dataclass
class AllocatorRecord:
    """The allocations of one step, in order: `events` are (allocation, +1 made / -1 freed);
    `blas_calls` the (thread, 'blas' | 'lt') of its cuBLAS operators (cuda_terms)."""

    allocations: list[Allocation] = field(default_factory=list)
    events: list[tuple[Allocation, int]] = field(default_factory=list)
    blas_calls: set[tuple[str, str]] = field(default_factory=set)


def _is_operator(name: str) -> bool:
    # Dispatcher operators ("aten::mm", "torchvision::roi_align"), not the autograd
    # engine's node events or revbench's own phase scopes.
    return "::" in name and name.split("::", 1)[0] not in ("autograd", "revbench")


def read_record(prof: profile) -> tuple[AllocatorRecord, list[tuple[int, int]]]:
    """The step's allocations from a profiler run with `profile_memory=True`, each paired
    with its free by address; also the frees of addresses allocated before the step, as
    (event index, address)."""
    roots = sorted(
        prof.profiler.kineto_results.experimental_event_tree(), key=lambda e: e.start_time_ns
    )
    record = AllocatorRecord()
    foreign_frees = []
    live: dict[int, Allocation] = {}
    stack = [(e, None, None) for e in reversed(roots)]
    while stack:  # depth first: the order the events happened in
        event, phase, operator = stack.pop()
        fields = event.extra_fields
        if type(fields).__name__ == "_ExtraFields_Allocation":
            nbytes, ptr = fields.alloc_size, fields.ptr
            if nbytes > 0:
                alloc = Allocation(cuda_bytes(nbytes), ptr, phase, operator)
                live[ptr] = alloc
                record.allocations.append(alloc)
                record.events.append((alloc, 1))
            elif nbytes < 0:
                alloc = live.pop(ptr, None)
                if alloc is None:
                    foreign_frees.append((len(record.events), ptr))
                    continue
                alloc.freed, alloc.freed_phase = True, phase
                alloc.internal = alloc.operator is not None and alloc.operator is operator
                record.events.append((alloc, -1))
            continue
        name = event.name
        if name.startswith(_SCOPE):
            phase = name[len(_SCOPE) :]
        elif _is_operator(name):
            operator = operator or event
            # Nested ones too: a linear layer's addmm runs inside aten::linear.
            blas = blas_kind_by_name(name)
            if blas and phase in ("forward", "backward"):
                record.blas_calls.add((phase, blas))
        stack.extend((child, phase, operator) for child in reversed(event.children))
    return record, foreign_frees


def _resident(net: nn.Module, step, host: bool = False) -> dict[int, tuple[str, int]]:
    """address -> (category, bytes) of every storage alive before the step that it uses;
    `host`: for a card, without the optimizer's step counts (host tensors there)."""
    groups = [
        ("parameters", list(net.parameters())),
        ("buffers", list(net.buffers())),
        ("optimizer_state", []),
        ("other", [t for t in tree_flatten(step.inputs)[0] if isinstance(t, torch.Tensor)]),
    ]
    if step.optimizer is not None:
        state = step.optimizer.state.values()
        groups[2][1].extend(
            t
            for s in state
            for t in s.values()
            if isinstance(t, torch.Tensor) and not (host and is_host_state(t))
        )
    resident: dict[int, tuple[str, int]] = {}
    for category, tensors in groups:
        for t in tensors:
            storage = t.untyped_storage()
            resident.setdefault(storage.data_ptr(), (category, cuda_bytes(storage.nbytes())))
    return resident


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
    card: str = DEFAULT_CARD,
) -> MemoryEstimate:
    """Peak memory of one steady-state step of a detector, by category (see module doc).

    `factory` builds the model (on the CPU, at `resolution`); `warmup_resolution` is the
    smallest side it takes, for the warm-up step of a model with `resized_to`. `card`: the
    card the estimate is for; its kept cuBLAS workspaces are added as resident memory, its
    optimizer runs as on the card (`revbench.methods.cuda_terms`).
    """
    library = card_library(card)
    torch.manual_seed(SEED)
    net = factory()
    common = dict(task=task, scenario=scenario, precision=precision, device="cpu")
    common["foreach"] = True if library else None
    step = build_step(
        net, batch_size=batch_size, resolution=resolution, optimizer=optimizer, **common
    )
    if scenario == "train":
        # The warm-up creates the optimizer state (sized by the weights, not the images): at
        # batch 1, and at the smallest resolution where the model can take other sizes than
        # its own (torchvision's detectors; EfficientDet's anchors are fixed to its size).
        resized = getattr(net, "resized_to", None)
        small = resized is not None
        warmup = build_step(
            net,
            batch_size=1,
            resolution=warmup_resolution if small else resolution,
            optimizer=optimizer,
            **common,
        )
        with resized(warmup_resolution) if small else contextlib.nullcontext():
            warmup.run()
        step.optimizer = warmup.optimizer
        del warmup
    torch.manual_seed(SEED)
    resident = _resident(net, step, host=library is not None)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with record_function(_SCOPE + "forward"):
            step.forward()
        with record_function(_SCOPE + "backward"):
            step.backward()
        grads = {
            p.grad.untyped_storage().data_ptr() for p in net.parameters() if p.grad is not None
        }
        with record_function(_SCOPE + "optimizer"):
            step.optimizer_step()
    record, foreign_frees = read_record(prof)
    if library is not None:
        # Kept from the warm-up's first calls, alive through the step: resident, under
        # addresses no allocation has.
        kept = kept_workspaces(library, record.blas_calls)
        for i, workspace in enumerate(kept):
            resident[-1 - i] = ("library_workspace", workspace.nbytes)
    return _peak(record, foreign_frees, resident, grads)


def _peak(
    record: AllocatorRecord,
    foreign_frees: list[tuple[int, int]],
    resident: dict[int, tuple[str, int]],
    grads: set[int],
) -> MemoryEstimate:
    """The highest point of resident + live allocations (kernel workspaces left out), and
    what it held by category."""
    resident_freed: dict[int, list[int]] = {}  # event index -> resident addresses freed there
    for index, ptr in foreign_frees:
        if ptr in resident:  # a resident storage the step frees (none in a plain step)
            resident_freed.setdefault(index, []).append(ptr)
    current = peak = 0
    peak_index = -1
    for index, (alloc, sign) in enumerate(record.events):
        for ptr in resident_freed.get(index, ()):
            current -= resident[ptr][1]
        if not alloc.internal:
            current += sign * alloc.nbytes
            if current > peak:
                peak, peak_index = current, index
    # Replay up to the peak to say what it held.
    gone = {ptr for index, ptrs in resident_freed.items() if index <= peak_index for ptr in ptrs}
    by_category = {name: 0 for name in CATEGORIES.values()}
    for ptr, (category, nbytes) in resident.items():
        if ptr not in gone:
            by_category[category] += nbytes
    live: dict[int, Allocation] = {}
    for alloc, sign in record.events[: peak_index + 1]:
        if not alloc.internal:
            if sign > 0:
                live[id(alloc)] = alloc
            else:
                del live[id(alloc)]
    for alloc in live.values():
        by_category[_category(alloc, grads)] += alloc.nbytes
    return MemoryEstimate(peak_bytes=sum(by_category.values()), by_category=by_category)


def _category(alloc: Allocation, grads: set[int]) -> str:
    if alloc.phase == "forward":
        return "activations"
    if alloc.phase == "backward":
        # A parameter's .grad: made in the backward, held until the optimizer step frees it.
        held = not alloc.freed or alloc.freed_phase not in ("forward", "backward")
        return "gradients" if alloc.ptr in grads and held else "temporaries"
    if alloc.phase == "optimizer":
        return "optimizer_state"
    return "other"
