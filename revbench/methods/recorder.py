"""Allocator events of a step run on CPU or fake tensors, for the caching-allocator model.

`AllocationRecorder` sees every operator at the dispatcher and writes the storages it
creates and frees as `revbench.caching_allocator.Event`s, which `simulate` replays for the
reserved peak; `trace_step` records one call. The estimator feeds a recorder from its own
tracker's dispatch (`revbench.methods.step_trace.LedgerTracker`).
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from ..caching_allocator import Event


class _Storage:
    __slots__ = ("alloc_id", "nbytes", "watched")

    def __init__(self, nbytes: int):
        self.alloc_id: int | None = None  # None: not allocated by the recorded code
        self.nbytes, self.watched = nbytes, False


class AllocationRecorder(TorchDispatchMode):
    """Records the storages operators create as allocator events, in program order.

    Every operator output whose storage is new is an `alloc` of the storage's bytes, and a
    `free` follows when that storage dies (a weakref finalizer, so it lands where reference
    counting releases it). Views and in-place results share a storage and allocate nothing,
    as on the GPU; a storage resized in place is a new allocation, then the old one's free.
    Storages the recorded code only reads are not allocations; `track` the tensors that live
    across the step (weights, gradients, optimizer state, inputs) to record them first.

    Enter it inside `FakeTensorMode` (which then runs below it) or on real CPU tensors.
    Garbage collection is paused while recording, so cycles do not move frees and the
    events are the same on every run. Temporaries inside a kernel (workspaces) are unseen.
    """

    def __init__(self, stream: int = 0):
        super().__init__()
        self.events: list[Event] = []
        self.stream = stream
        self._storages = WeakIdKeyDictionary()  # untyped storage -> _Storage
        self._finalizers: list[weakref.finalize] = []
        self._next_id = 0
        self._gc_was_enabled = False

    def track(self, *tensors: torch.Tensor | None) -> None:
        """Record live `tensors` as allocated now, in the order given (None is skipped)."""
        for tensor in tensors:
            if tensor is not None:
                self._allocate(tensor.untyped_storage())

    def alloc_id(self, tensor: torch.Tensor) -> int | None:
        """The id of the live allocation holding `tensor`'s storage; None if there is none."""
        record = self._storages.get(tensor.untyped_storage())
        return None if record is None else record.alloc_id

    def transient(self, nbytes: int) -> None:
        """An allocation made and freed inside the operator that just ran (a library's
        per-call workspace): alloc and free, at this point of the record."""
        self.events.append(Event("alloc", self._next_id, nbytes, self.stream))
        self.events.append(Event("free", self._next_id))
        self._next_id += 1

    def empty_cache(self) -> None:
        self.events.append(Event("empty_cache"))

    def reset_peak(self) -> None:
        self.events.append(Event("reset_peak"))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.note_inputs(args, kwargs)
        out = func(*args, **(kwargs or {}))
        self.note_outputs(out)
        return out

    def note_inputs(self, args, kwargs) -> None:
        """Before an operator runs: the storages it reads exist already (not allocations)."""
        for leaf in tree_leaves((args, kwargs)):
            if isinstance(leaf, torch.Tensor):
                self.note_input(leaf)

    def note_input(self, tensor: torch.Tensor) -> None:
        """`note_inputs` for one tensor the operator reads."""
        storage = tensor.untyped_storage()
        if self._storages.get(storage) is None:
            self._storages[storage] = _Storage(storage.nbytes())

    def note_outputs(self, out) -> None:
        """After an operator ran: a new (or resized) storage among its outputs is allocated."""
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                storage = leaf.untyped_storage()
                known = self._storages.get(storage)
                if known is None or known.nbytes != storage.nbytes():
                    self._allocate(storage)

    def _allocate(self, storage) -> None:
        record = self._storages.get(storage)
        if record is None:
            record = self._storages[storage] = _Storage(0)
        old = record.alloc_id
        if old is not None and record.nbytes == storage.nbytes():
            return  # tracked twice, or a view of a tracked tensor
        record.nbytes = storage.nbytes()
        record.alloc_id = None
        if record.nbytes > 0:  # CUDA allocates no block for an empty storage
            record.alloc_id = self._next_id
            self._next_id += 1
            self.events.append(Event("alloc", record.alloc_id, record.nbytes, self.stream))
        if old is not None:
            self.events.append(Event("free", old))
        if not record.watched:
            record.watched = True
            self._finalizers.append(weakref.finalize(storage, self._free, record))

    def _free(self, record: _Storage) -> None:
        if record.alloc_id is not None:
            self.events.append(Event("free", record.alloc_id))
            record.alloc_id = None

    def __enter__(self):
        self.start()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self.stop()

    def start(self) -> None:
        """Begin recording (entering the mode does it; a mode that calls `note_inputs` and
        `note_outputs` itself calls this instead)."""
        self._gc_was_enabled = gc.isenabled()
        gc.disable()

    def stop(self) -> None:
        for finalizer in self._finalizers:
            finalizer.detach()  # storages that outlive the recording free nothing here
        self._finalizers.clear()
        if self._gc_was_enabled:
            gc.enable()


def trace_step(
    fn: Callable[..., Any], *args, live: Iterable[torch.Tensor | None] = (), **kwargs
) -> list[Event]:
    """The allocator events of `fn(*args, **kwargs)`, `live` tensors recorded first.

    Run it inside `FakeTensorMode` to trace a full-size step without memory; the events
    replay through `simulate` for the reserved peak.
    """
    with AllocationRecorder() as recorder:
        recorder.track(*live)
        fn(*args, **kwargs)
    return recorder.events
