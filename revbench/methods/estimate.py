"""The estimator behind the `estimate` method (estimate_method.py): peak training memory
without a GPU.

The model and its inputs are built under FakeTensorMode (CPU fake tensors carry shapes
and dtypes but allocate nothing), then the same step sequence as the cuda method runs
under torch's MemTracker: a warm-up step first, so optimizer state exists and the tracked
step is the steady state, then one tracked step. Every tensor alive at the peak is
attributed to a category. The result is deterministic: the same cell gives the same bytes
on every run and machine, so it can be gated exactly.

Cost per model, not per cell (`StepEstimator`): a model is built and warmed up once, each
batch size runs only its tracked step, and once two batch sizes are traced every other one
follows from them exactly, without a step (`revbench.methods.step_trace`: each storage's
bytes are affine in the batch where the step runs the same operators at every batch size;
where it does not, each batch size is traced). The method keeps a model's estimator from
cell to cell, so a suite's batch sizes and max-batch's probes cost a warm-up and two
tracked steps.

Why fake CPU tensors rather than the meta device: autocast does not apply to meta
tensors, so amp precisions could not be estimated there. Sizes are rounded as CUDA's
caching allocator rounds them (512-byte blocks), so figures read as CUDA bytes. Autocast
makes CUDA's casts, not the CPU's (`revbench.autocast_policy`): layer and group norm,
softmax and the losses run in float32 as on a GPU.

Three memory kinds come out: the allocated peak (`peak_bytes`, MemTracker: bytes in live
tensors), and, from the same step's allocation and free events replayed through the
caching-allocator model (`revbench.caching_allocator`), the reserved peak and the
fragmentation at it. The two agree on the tensors: the largest sum of live blocks in the
recorded events is `peak_bytes` exactly; the model's own allocated peak can be a little
higher, because c10 hands out a cached large block whole (and counts it allocated) when the
rest would be 1 MiB or less.

Attribution at the peak follows MemTracker: a gradient counts as `gradients` once it is
accumulated into `.grad`; one still being produced when the peak occurs counts as a
temporary. The total is exact either way.

Detection and segmentation cells with torchvision's data-dependent detectors run on real CPU
tensors instead (estimate_dense.py, `on_real_tensors`); EfficientDet's training step runs
here, its inference (NMS) there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_leaves

from revbench.models import create

from ..autocast_policy import cuda_cast_policy
from ..axes import DdpConfig
from ..caching_allocator import simulate
from ..cards import DEFAULT_CARD, card_capability
from ..scenario import build_on_meta, build_step
from .cuda_kernels import CardKernels
from .cuda_terms import card_library, is_host_state, kept_workspaces
from .estimate_ddp import DdpBuckets
from .recorder import AllocationRecorder
from .step_trace import (  # noqa: F401 (CATEGORIES, CUDA_BLOCK_BYTES: by name, for callers)
    CATEGORIES,
    CUDA_BLOCK_BYTES,
    DEL,
    LIBRARY,
    MemoryEstimate,
    StepTrace,
    extrapolate,
    in_settled_order,
    replay,
    with_kept_blocks,
    without_storages,
)


def from_trace(trace: StepTrace) -> MemoryEstimate:
    """The estimate a traced (or extrapolated) step gives: MemTracker's peak and breakdown,
    and the allocator model's replay of its events."""
    peak = replay(trace)
    events = trace.events or ()
    return MemoryEstimate(
        peak_bytes=peak.peak_bytes,
        by_category=peak.by_category,
        reserved=simulate(events) if trace.events is not None else None,
        events=events,
    )


class StepEstimator:
    """Estimates of one model's step (everything of a cell but the batch) at any batch size.

    The model is built once, as fake tensors, and given the optimizer state a first step
    leaves (made by the optimizer from zero gradients, `prime_optimizer`; the state of
    parameters the first tracked step gives no gradient is taken out of its trace, and a
    model that builds tensors on first use is traced again; DDP and the detectors run a
    warm-up step instead); each batch size then runs only its tracked
    step, on the same model and optimizer. Once two batch sizes above 1 are traced and their
    traces line up (the step runs the same operators at both), every other batch size above
    1 is extrapolated from them exactly, without a step (`revbench.methods.step_trace`).
    """

    def __init__(
        self,
        factory: Callable[[], nn.Module],
        *,
        resolution: int,
        scenario: str = "train",
        precision: str = "fp32",
        optimizer: str = "sgd",
        task: str = "classify",
        predict_reserved: bool = True,
        ddp: DdpConfig | None = None,
        prime: bool = True,
        card: str = DEFAULT_CARD,
    ):
        self.prime = prime  # False: a warm-up step makes the optimizer state, always
        # The card the estimate is for: what its libraries add (cuda_terms) and the kernels
        # it runs in place of the CPU's (cuda_kernels); None for the CPU step.
        self.library = card_library(card)
        self.capability = card_capability(card)
        self.kernels: CardKernels | None = None  # made on the first traced step
        self.resolution, self.scenario, self.precision = resolution, scenario, precision
        self.optimizer, self.task, self.ddp = optimizer, task, ddp
        self.predict_reserved = predict_reserved
        self._factory = factory
        self._fake_mode: FakeTensorMode | None = None
        self._net: nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._ready: list[int] = []  # DDP: the order gradients became ready in the warm-up
        self._primed = False  # optimizer state made without a warm-up step
        self._traced: list[StepTrace] = []  # the first two traced batch sizes
        self.steps_run = 0  # warm-up and tracked steps, for tests and benchmarks

    def estimate(self, batch_size: int) -> MemoryEstimate:
        """The estimate at `batch_size`: extrapolated where it can be, traced otherwise.

        Only the two traces extrapolation starts from are kept (a max-batch search asks for
        many batch sizes; each answer is a replay of a kept or extrapolated trace)."""
        kept = next((t for t in self._traced if t.batch_size == batch_size), None)
        trace = kept or self._extrapolated(batch_size) or self._trace(batch_size)
        return from_trace(trace)

    def _extrapolated(self, batch_size: int) -> StepTrace | None:
        # Batch 1 is traced, never extrapolated to: a dimension of size 1 lets operators
        # return views where larger batches copy (a (1, C, H, W) tensor is contiguous in
        # more layouts), so its trace may hold fewer storages than any other's.
        if batch_size == 1 or len(self._traced) < 2:
            return None
        return extrapolate(*self._traced, batch_size)

    def _trace(self, batch_size: int) -> StepTrace:
        if self._net is None:
            # Built on the meta device first: model constructors may read values (`.item()`
            # on a linspace of drop-path rates), which fake tensors refuse; to_empty then
            # gives the weights fake CPU storage.
            net = build_on_meta(self._factory)
            self._fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
            with self._fake_mode:
                self._net = net._apply(_fake_cpu_like)
        with self._fake_mode, amp_policy(self.precision), self._card_kernels():
            trace = self._tracked_step(batch_size)
        if batch_size > 1 and len(self._traced) < 2:  # batch 1 may differ (above)
            self._traced.append(trace)
        return trace

    def _tracked_step(self, batch_size: int) -> StepTrace:
        net = self._net
        first = self._optimizer is None and not self._primed and self.steps_run == 0
        step = build_step(
            net,
            task=self.task,
            scenario=self.scenario,
            precision=self.precision,
            batch_size=batch_size,
            resolution=self.resolution,
            device="cpu",
            optimizer=self.optimizer,
            # On a card PyTorch's optimizers run their multi-tensor implementation.
            foreach=True if self.library else None,
        )
        if not first:
            step.optimizer = self._optimizer  # its state is the first step's
        buckets = DdpBuckets(net, self.ddp) if self.ddp else None
        checked = None
        if first and self._may_prime():
            # No warm-up step: the optimizer state the first step would leave is made by
            # the optimizer itself, and the tracked step checks that a first step would
            # have made just that (below).
            prime_optimizer(step)
            self._optimizer = step.optimizer
            self._primed = True
            checked = FirstStepCheck(net)
        elif first:
            step.run()  # warm-up: creates optimizer state, as the cuda method's warm-up does
            self.steps_run += 1
            self._optimizer = step.optimizer
            self._ready = list(buckets.ready) if buckets else []
        elif buckets:
            buckets.ready = list(self._ready)  # the rebuilt buckets of the warm-up's order
        recorder = AllocationRecorder() if self.predict_reserved else None
        from .memtrackers import LedgerTracker  # start-up: MemTracker takes a second; workers only

        host = host_storages(step.optimizer) if self.library else set()
        tracker = LedgerTracker(recorder, self.library, host)
        # Registered after the warm-up: state created before track_external is not
        # attributed to its category otherwise. The batch (images, targets) lives on the
        # GPU in a real run, so it counts ("other").
        tracker.track_external(
            net, *([step.optimizer] if step.optimizer else []), step.inputs, step.targets
        )
        workspaces_at = 0
        with tracker, buckets.alive() if buckets else contextlib.nullcontext():
            if recorder is not None:
                start, state = live_tensors(net, step)
                recorder.track(*start)
                workspaces_at = len(recorder.events)  # a first step made them here
                recorder.track(*(t for t in state if id(t.untyped_storage()) not in host))
            with checked or contextlib.nullcontext():
                step.run()
        self.steps_run += 1
        ops = in_settled_order(tracker.ops, lambda op: op[0] == DEL, lambda op: op[1])
        events = None
        if recorder is not None:
            events = in_settled_order(recorder.events, lambda e: e.action == "free", lambda e: e.id)
        trace = StepTrace(batch_size, ops, tuple(tracker.sizes), events)
        if checked is not None:
            unused = checked.unused_state(step.optimizer)
            if not checked.kept_model():
                # The model built tensors on first use: the step was a first step after
                # all. Traced again, now that it has run once, as after a warm-up.
                del step, tracker, recorder, unused
                return self._tracked_step(batch_size)
            # State primed for parameters no gradient reached, which a first step leaves
            # without any: it lived through the step untouched, so taking its entries out
            # gives the trace of a step without it (as a warm-up would have left).
            trace = without_storages(
                trace,
                {n for n in map(tracker.ledger_number, unused) if n is not None},
                {i for i in map(recorder.alloc_id, unused) if i is not None} if recorder else set(),
            )
        if self.library is None:
            return trace
        kept = [w.nbytes for w in kept_workspaces(self.library, tracker.blas_calls)]
        return with_kept_blocks(trace, kept, LIBRARY, workspaces_at)

    def _card_kernels(self) -> contextlib.AbstractContextManager:
        # The card's attention and dropout kernels, where they are not the CPU's.
        if self.library is None:
            return contextlib.nullcontext()
        if self.kernels is None:
            self.kernels = CardKernels(self.capability, self.library.release)
        return self.kernels

    def _may_prime(self) -> bool:
        # DDP's buckets follow the order gradients became ready in a first step, and the
        # detectors build anchors and matchers on first use: those keep the warm-up.
        return self.prime and self.ddp is None and self.task == "classify"


def prime_optimizer(step) -> None:
    """The optimizer state of a first step, without running one: every parameter that
    takes a gradient gets a zero gradient, the optimizer steps (creating its state as a
    real step does: SGD's momentum buffers, AdamW's moments and step counts) and the
    gradients are freed again."""
    if step.optimizer is None:
        return
    params = [p for g in step.optimizer.param_groups for p in g["params"] if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    step.optimizer.step()
    step.optimizer.zero_grad(set_to_none=True)


class FirstStepCheck:
    """Whether a step after `prime_optimizer` was a steady-state step: the model kept the
    tensors it had (nothing built on first use), and which parameters got no gradient
    (their primed state a real first step would not have made). Enter it around the step."""

    def __init__(self, net: nn.Module):
        self.net = net
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.got_grad: set[int] = set()
        self._before = _model_tensors(net)
        self._hooks: list = []

    def __enter__(self):
        self._hooks = [
            p.register_post_accumulate_grad_hook(lambda p: self.got_grad.add(id(p)))
            for p in self.params
        ]
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()

    def kept_model(self) -> bool:
        """Whether the model holds the tensors it held before the step."""
        return _model_tensors(self.net) == self._before

    def unused_state(self, optimizer) -> list[torch.Tensor]:
        """The primed state of parameters that got no gradient, taken out of `optimizer`
        (a first step leaves them without state)."""
        if optimizer is None:
            return []
        unused = [p for p in self.params if id(p) not in self.got_grad]
        state = [optimizer.state.pop(p, {}) for p in unused]
        return [v for values in state for v in values.values() if isinstance(v, torch.Tensor)]


def _fake_cpu_like(t: torch.Tensor) -> torch.Tensor:
    """`Module.to_empty(device="cpu")`'s tensor, made from sizes and strides: a meta
    tensor given to the fake mode is converted first (a second per RevBiFPN-S0's 1,874
    parameters), sizes alone hit its cache. Same sizes, strides and storage bytes as
    `empty_like` (which keeps a dense tensor's strides; any other goes through it)."""
    if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last):
        return torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device="cpu")
    return torch.empty_like(t, device="cpu")


def _model_tensors(net: nn.Module) -> set[int]:
    """Storages the model holds: parameters, buffers and tensor attributes of modules."""
    held = set()
    for module in net.modules():
        for value in [*module._parameters.values(), *module._buffers.values()]:
            if value is not None:
                held.add(id(value))
        for value in vars(module).values():
            if isinstance(value, torch.Tensor):
                held.add(id(value))
    return held


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
    card: str = DEFAULT_CARD,
    **overrides,
) -> MemoryEstimate:
    """Peak memory of one steady-state step of `model`, by category.

    `model` is a registered name (built with `img_size=resolution` and `overrides`) or a
    zero-argument factory returning a module that serves `task` (for classify: (B, 3, R, R)
    images to logits, with a `num_classes` attribute). `predict_reserved` records the step's
    allocations and frees and replays them through the caching-allocator model
    (`revbench.caching_allocator`) for the reserved peak; False skips it (allocated peak only).
    `ddp`: one rank of a data-parallel train step, DDP's gradient buckets included
    (`revbench.methods.estimate_ddp`). `card`: the card the estimate is for
    (`revbench.cards`): what its libraries and kernels add (`revbench.methods.cuda_terms`);
    "cpu" for the step as the CPU kernels run it. For several batch sizes of one model,
    `StepEstimator` runs fewer steps.
    """
    return StepEstimator(
        model_factory(model, resolution, overrides),
        resolution=resolution,
        scenario=scenario,
        precision=precision,
        optimizer=optimizer,
        task=task,
        predict_reserved=predict_reserved,
        ddp=ddp,
        card=card,
    ).estimate(batch_size)


def model_factory(
    model: str | Callable[[], nn.Module], resolution: int, overrides: dict
) -> Callable[[], nn.Module]:
    """A zero-argument factory of `model`: a registered name built at `resolution` with
    `overrides`, or a factory given as is (overrides apply only to names)."""
    if isinstance(model, str):
        return lambda: create(model, img_size=resolution, **overrides)
    if overrides:
        raise ValueError("overrides apply only when the model is given by name")
    return model


def amp_policy(precision: str) -> contextlib.AbstractContextManager:
    """CUDA's autocast casts for an amp precision on CPU tensors; nothing for fp32."""
    return cuda_cast_policy() if precision != "fp32" else contextlib.nullcontext()


def live_tensors(net: nn.Module, step) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """What a GPU holds when a steady-state step starts, in the order a real run allocated
    it: each module's parameters and buffers (construction order) and the batch; then,
    apart, the optimizer state (created in the first step's end, parameter by parameter:
    a first step's library workspaces come between the two)."""
    tensors: list[torch.Tensor] = []
    for module in net.modules():
        tensors.extend(module.parameters(recurse=False))
        tensors.extend(module.buffers(recurse=False))
    tensors.extend(
        t for t in tree_leaves((step.inputs, step.targets)) if isinstance(t, torch.Tensor)
    )
    state: list[torch.Tensor] = []
    if step.optimizer is not None:
        for group in step.optimizer.param_groups:
            for p in group["params"]:
                values = step.optimizer.state.get(p, {}).values()
                state.extend(v for v in values if isinstance(v, torch.Tensor))
    return tensors, state


def host_storages(optimizer: torch.optim.Optimizer | None) -> set[int]:
    """Ids of the optimizer state's storages a run on a card keeps on the host: AdamW's
    step counts (0-dim CPU tensors unless capturable or fused, `_init_group`)."""
    if optimizer is None:
        return set()
    return {
        id(v.untyped_storage())
        for state in optimizer.state.values()
        for v in state.values()
        if isinstance(v, torch.Tensor) and is_host_state(v)
    }
