"""The reversible backprop engine shared by every reversible family.

Autograd caches every hidden activation for the backward pass. A reversible stack keeps
only its final outputs instead: backward walks the blocks in reverse, and each block
rebuilds its inputs from its outputs while backpropagating through a recompute of its
residual functions. Activation memory is then independent of depth.

The contract:

* A `ReversibleBlock` maps a tuple of tensors to a tuple of tensors and owns three steps:
  `forward(*xs) -> ys` (ordinary autograd), `inverse(*ys) -> xs` (exact, no grad) and
  `backward_pass(ys, dys) -> (xs, dxs)` (rebuild the inputs and their gradients, and
  accumulate parameter gradients through a recompute). Two-stream blocks, e.g.
  Y1 = X1 + F(X2); Y2 = X2 + G(Y1), get that step from `TwoStreamBlock`.
* A `ReversibleStack` runs its blocks in one of three modes on the same weights:
  `reversible` (this engine), `vanilla` (ordinary autograd) or `checkpoint`
  (torch.utils.checkpoint per block).
* The engine, not the blocks, owns the walk and what must be replayed during it: the
  autocast state of the forward, the random masks (blocks draw through `record` in the
  forward and `replay` in the recompute; only the reversible path, which recomputes,
  snapshots generator state), and BatchNorm running statistics, which a recompute must
  not update a second time.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from .modes import MODES, check_mode  # noqa: F401 (the engine's modes, named here too)

Tensors = tuple[Tensor, ...]


# --------------------------------------------------------------------------- replay state


class RNGSnapshot:
    """Generator state (CPU and the CUDA devices in use) at one point of the forward.

    Restoring it around a recompute makes drop path and dropout draw the same masks as
    the forward did, without reseeding the global generator: a seeded run stays
    reproducible and identical across modes.
    """

    def __init__(self, tensors: Iterable[Tensor]):
        self.cpu = torch.get_rng_state()
        self.cuda_devices = sorted({t.device.index or 0 for t in tensors if t.is_cuda})
        self.cuda = [torch.cuda.get_rng_state(d) for d in self.cuda_devices]

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        # fork_rng puts the outer state back afterwards, so the replay consumes nothing.
        with torch.random.fork_rng(devices=self.cuda_devices):
            torch.set_rng_state(self.cpu)
            for device, state in zip(self.cuda_devices, self.cuda):
                torch.cuda.set_rng_state(state, device)
            yield


class RNGTape:
    """The generator states one block's random draws started from, on the reversible path.

    The engine hands a tape to a block (and the reversible blocks inside it) for its
    forward, where `record` snapshots the state before each draw, and again for the
    recompute in backward, where `replaying` is set and the same calls restore it. Off
    that path (vanilla, checkpoint, inference) a block has no tape and snapshots nothing.
    """

    def __init__(self) -> None:
        self.snapshots: dict[tuple[nn.Module, str], RNGSnapshot] = {}
        self.replaying = False


@contextlib.contextmanager
def _taped(block: nn.Module, tape: RNGTape) -> Iterator[None]:
    blocks = [m for m in block.modules() if isinstance(m, ReversibleBlock)]
    for m in blocks:
        m._tape = tape
    try:
        yield
    finally:
        for m in blocks:
            m._tape = None


def _autocast_state() -> list[tuple[str, bool, torch.dtype]]:
    return [
        (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        for dev in ("cuda", "cpu")
    ]


@contextlib.contextmanager
def _autocast_replayed(state: list[tuple[str, bool, torch.dtype]]) -> Iterator[None]:
    # Backward runs outside the forward's autocast region; the recompute must use the
    # forward's precision or the rebuilt inputs and the gradients drift.
    # Without the cast cache: autocast keeps the half-precision copy of every leaf that
    # requires grad until its region ends, and each block's rebuilt inputs are such leaves,
    # so one cached region around the whole walk would keep a copy of every block's inputs
    # alive until the backward ends (RevBiFPN-S6 at 352 px: 990 MB per sample, not 109).
    with contextlib.ExitStack() as stack:
        for dev, enabled, dtype in state:
            stack.enter_context(
                torch.autocast(dev, dtype=dtype, enabled=enabled, cache_enabled=False)
            )
        yield


@contextlib.contextmanager
def frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """Recompute a module in train mode without updating BatchNorm running statistics.

    The forward already updated them once for this step. With momentum 0 the update is
    running * 1 + batch * 0, which leaves the buffers bit-identical, while BatchNorm still
    normalises with the batch statistics and saves the same tensors for backward (which
    torch.utils.checkpoint verifies); the batch counter is put back afterwards.
    """
    bns = [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(bns, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


# --------------------------------------------------------------------------------- blocks


class ReversibleBlock(nn.Module):
    """A block whose inputs can be rebuilt exactly from its outputs.

    Subclasses implement `forward`, `inverse` and `backward_pass`. Sub-functions that
    draw random numbers run through `self.record(key, fn, *args)` in the forward and
    `self.replay(key, fn, *args)` in the recompute, so masks are replayed exactly.
    """

    def __init__(self) -> None:
        super().__init__()
        self._tape: RNGTape | None = None  # the engine's, while it runs this block

    def forward(self, *xs: Tensor) -> Tensors:
        raise NotImplementedError

    def inverse(self, *ys: Tensor) -> Tensors:
        raise NotImplementedError

    def backward_pass(self, ys: Tensors, dys: Tensors) -> tuple[Tensors, Tensors]:
        raise NotImplementedError

    def record(self, key: str, fn: Callable[..., Tensor], *args: Tensor) -> Tensor:
        """fn(*args); on the reversible path the generator state is saved first (and a
        recompute of the whole forward restores it instead)."""
        tape = self._tape
        if tape is None:
            return fn(*args)
        if tape.replaying:
            return self.replay(key, fn, *args)
        tape.snapshots[self, key] = RNGSnapshot(args)
        return fn(*args)

    def replay(self, key: str, fn: Callable[..., Tensor], *args: Tensor) -> Tensor:
        """fn(*args) from the generator state `record` saved under `key`, if it saved one."""
        snapshot = None if self._tape is None else self._tape.snapshots.get((self, key))
        if snapshot is None:
            return fn(*args)
        with snapshot.restored():
            return fn(*args)

    def backward_from_inputs(self, xs: Tensors, ys: Tensors, dys: Tensors) -> Tensors:
        """The `keep_inputs` step: input gradients from the stored inputs `xs` (and outputs
        `ys`). The default recomputes the whole block, its draws replayed; a block made of
        parts can walk them one at a time from the stored values instead (RevCol: level by
        level).
        """
        return _recompute_block(self, xs, dys)


class TwoStreamBlock(ReversibleBlock):
    """Additive coupling over two streams (RevNet / RevViT):

        Y1 = X1 + F(X2)        X2 = Y2 - G(Y1)
        Y2 = X2 + G(Y1)        X1 = Y1 - F(X2)

    Subclasses set `self.F` and `self.G` (modules or callables with parameters inside).

    `drop_path` = p > 0 adds stochastic depth shared by the two residuals, as the official
    RevViT and Rev-MViT have it (PySlowFast and mmpretrain reseed one seed before both
    draws): one mask M per sample, M = Bernoulli(1 - p) / (1 - p), so that

        Y1 = X1 + M * F(X2)    Y2 = X2 + M * G(Y1)

    and a dropped sample skips the whole block. M is drawn through `record` like any other
    draw, so the recompute redraws it from the forward's generator state (no reseeding).
    F and G may still draw randomness of their own (dropout, a drop path each).
    """

    F: nn.Module
    G: nn.Module
    drop_path: float = 0.0

    def _draw_mask(self, x: Tensor) -> Tensor:
        keep = 1.0 - self.drop_path
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # (B, 1, ..., 1)
        return x.new_empty(shape).bernoulli_(keep).div_(keep)

    def _shared_mask(self, x: Tensor) -> Tensor | None:
        """M for this block's forward: drawn (and recorded) in the forward, redrawn from
        the recorded state in the recompute; None without drop path or in eval."""
        if not (self.training and self.drop_path > 0):
            return None
        return self.record("drop_path", self._draw_mask, x)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensors:
        mask = self._shared_mask(x2)
        y1 = x1 + _masked(self.record("F", self.F, x2), mask)
        y2 = x2 + _masked(self.record("G", self.G, y1), mask)
        return y1, y2

    @torch.no_grad()
    def inverse(self, y1: Tensor, y2: Tensor) -> Tensors:
        x2 = y2 - self.G(y1)
        x1 = y1 - self.F(x2)
        return x1, x2

    def backward_pass(self, ys: Tensors, dys: Tensors) -> tuple[Tensors, Tensors]:
        y1, y2 = ys
        dy1, dy2 = dys
        mask = self._shared_mask(y1)  # the forward's M, redrawn (the tape is replaying)
        # G first: it rebuilds X2 and turns dY2 into the full gradient of Y1.
        with torch.enable_grad():
            y1 = y1.detach().requires_grad_()
            g = _masked(self.replay("G", self.G, y1), mask)
            g.backward(dy2)
        with torch.no_grad():
            x2 = y2 - g
            del g, y2  # G's graph and the Y2 stream are no longer needed
            dx1 = dy1 + y1.grad  # dL/dY1 = dy1 + (dG/dY1)^T dy2 = dL/dX1
        # F next: it rebuilds X1 and adds F's path to the gradient of X2.
        with torch.enable_grad():
            x2 = x2.detach().requires_grad_()
            f = _masked(self.replay("F", self.F, x2), mask)
            f.backward(dx1)
        with torch.no_grad():
            x1 = y1.detach() - f
            del f, y1
            dx2 = dy2 + x2.grad
        return (x1, x2.detach()), (dx1, dx2)


def _masked(residual: Tensor, mask: Tensor | None) -> Tensor:
    # M is drawn in the stream dtype; a residual computed under autocast is scaled in its
    # own dtype, as a DropPath module at the end of F or G would scale it.
    return residual if mask is None else residual * mask.to(residual.dtype)


# --------------------------------------------------------------------------------- engine


class _ReversibleFunction(torch.autograd.Function):
    """Runs a stack keeping only its final outputs; backward walks the blocks in reverse.

    With `keep_inputs` the engine instead stores every block's inputs and recomputes each
    block from them: exact even where the inverse loses precision (RevCol's division by
    alpha), at the cost of one block's inputs per block.
    """

    @staticmethod
    def forward(
        ctx,
        blocks: Sequence[ReversibleBlock],
        keep_inputs: bool,
        anchor: Tensor | None,
        *xs: Tensor,
    ):
        # `anchor` is unused here: it only puts the Function in the graph (see ReversibleStack).
        ctx.blocks = blocks
        ctx.keep_inputs = keep_inputs
        ctx.autocast = _autocast_state()
        # Detached inputs: views of a grad-requiring tensor made with grad disabled keep
        # requires_grad without a grad_fn, which breaks module hooks (MemTracker's among them).
        xs = tuple(x.detach() for x in xs)
        kept: list[Tensor] = []
        ctx.arity, ctx.tapes = [], []
        for block in blocks:
            if keep_inputs:
                kept.extend(xs)
                ctx.arity.append(len(xs))  # a block may change the stream count (RevSilo)
            tape = RNGTape()
            with _taped(block, tape):
                xs = tuple(block(*xs))
            tape.replaying = True  # from here on the tape serves the recompute
            ctx.tapes.append(tape)
        ctx.save_for_backward(*xs, *kept)
        ctx.n_out = len(xs)
        return xs

    @staticmethod
    def backward(ctx, *dys: Tensor):
        saved = ctx.saved_tensors
        ys, dys = tuple(saved[: ctx.n_out]), tuple(dys)
        kept = list(saved[ctx.n_out :])
        blocks = ctx.blocks
        with _autocast_replayed(ctx.autocast):
            for i in range(len(blocks) - 1, -1, -1):
                block = blocks[i]
                with frozen_running_stats(block), _taped(block, ctx.tapes[i]):
                    if ctx.keep_inputs:
                        n = ctx.arity[i]
                        xs, kept = tuple(kept[-n:]), kept[:-n]
                        dys = block.backward_from_inputs(xs, ys, dys)
                        ys = xs
                    else:
                        ys, dys = block.backward_pass(ys, dys)
                del block
        ctx.blocks = ctx.tapes = None
        return (None, None, None, *dys)


def _recompute_block(block: ReversibleBlock, xs: Tensors, dys: Tensors) -> Tensors:
    # The block's tape is replaying: each `record` in its forward restores its draw.
    with torch.enable_grad():
        xs = tuple(x.detach().requires_grad_() for x in xs)
        ys = block(*xs)
    torch.autograd.backward(ys, dys)
    return tuple(x.grad if x.grad is not None else torch.zeros_like(x) for x in xs)


class ReversibleStack(nn.Module):
    """A run of reversible blocks, executed in one of the engine's three modes.

    Blocks are registered as numbered children (`stack.0`, `stack.1`, ...), like
    nn.Sequential, so state_dict keys read the same in every mode.
    """

    def __init__(
        self, blocks: Iterable[ReversibleBlock], mode: str = "reversible", keep_inputs: bool = False
    ):
        super().__init__()
        for i, block in enumerate(blocks):
            self.add_module(str(i), block)
        self.mode = check_mode(mode)
        self.keep_inputs = keep_inputs

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[ReversibleBlock]:
        return iter(self._modules.values())  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> ReversibleBlock:
        return list(self._modules.values())[i]  # type: ignore[return-value]

    def forward(self, *xs: Tensor) -> Tensors:
        blocks = list(self)
        training_step = torch.is_grad_enabled() and (
            any(x.requires_grad for x in xs) or any(p.requires_grad for p in self.parameters())
        )
        if not training_step or self.mode == "vanilla":
            # Inference never takes the custom path: there is nothing to save.
            for block in blocks:
                xs = tuple(block(*xs))
            return xs
        if self.mode == "checkpoint":
            for block in blocks:
                xs = tuple(checkpointed(block, *xs))
            return xs
        # Autograd records the Function, and so calls its backward (which reaches the
        # parameters), only if some input requires grad. A stack fed with plain images
        # (RevBiFPN has no parameterised stem) needs a grad-requiring stand-in input.
        anchor = None
        if not any(x.requires_grad for x in xs):
            anchor = torch.empty(0, device=xs[0].device, requires_grad=True)
        return _ReversibleFunction.apply(blocks, self.keep_inputs, anchor, *xs)

    @torch.no_grad()
    def inverse(self, *ys: Tensor) -> Tensors:
        for block in reversed(list(self)):
            ys = tuple(block.inverse(*ys))
        return ys


def checkpointed(module: nn.Module, *xs: Tensor):
    """`module(*xs)` under torch.utils.checkpoint, BatchNorm statistics moved once.

    torch.utils.checkpoint replays generator and autocast state in its recompute itself;
    the BatchNorm running statistics it would update a second time are frozen there.
    """
    return checkpoint(
        module,
        *xs,
        use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), frozen_running_stats(module)),
    )


# ------------------------------------------------------------------------------ modes


def set_mode(module: nn.Module, mode: str) -> nn.Module:
    """Switch `module` to `mode` on the same weights.

    A model's mode has one home, its config (`cfg.mode`, which `model.mode` reads): every
    `ReversibleModel` inside `module` gets its config with `mode` (validated there, so a
    mode the config does not allow is refused before anything changes), then every
    `ReversibleStack` runs in it.
    """
    check_mode(mode)
    models = [m for m in module.modules() if isinstance(m, ReversibleModel)]
    configs = [dataclasses.replace(m.cfg, mode=mode) for m in models]
    for model, cfg in zip(models, configs):
        model.cfg = cfg
    for m in module.modules():
        if isinstance(m, ReversibleStack):
            m.mode = mode
    return module


class ReversibleModel(nn.Module):
    """Base for models run in the engine's modes (the reversible families, and detectors
    whose trunk may be one). Subclasses set `self.cfg`, a frozen `ModelConfig`; its `mode`
    is the model's, chosen at construction or by `set_mode`."""

    cfg: Any

    @property
    def mode(self) -> str:
        return self.cfg.mode

    def set_mode(self, mode: str) -> ReversibleModel:
        return set_mode(self, mode)
