"""The estimator's MemTracker subclasses: the ledger a traced step writes, and the tracker
that keeps only the global peak (DDP's real CPU ranks read theirs from it).

Apart from the other estimator modules because importing torch's MemTracker takes over a
second: the run's own process never needs it, only the workers that trace a step.
"""

from __future__ import annotations

import weakref

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.distributed._tools import mem_tracker as _mt
from torch.utils._pytree import tree_leaves

from .cuda_kernels import host_outputs
from .cuda_terms import LibraryRules, blas_call, is_host_state
from .fake_fastpaths import FAST_OUTPUTS
from .recorder import AllocationRecorder
from .step_trace import _SIZED, ADD, CHECK, DEL, ENTER, LIBRARY


class LedgerTracker(_mt.MemTracker):
    """MemTracker that writes down its bookkeeping instead of keeping a peak.

    `ops` holds (kind, storage number, category, previous category) per entry; `sizes` the
    storage's bytes before rounding for each ADD and SIZE entry, in order. Storages are
    numbered in the order MemTracker first counts them, so two runs of the same operators
    number them alike. MemTracker's own counts stay unrounded on CPU tensors: only their
    zero test is read, and a storage is zero bytes rounded or not.

    `recorder`: an allocation recorder fed from this mode's dispatch, so one Python
    dispatch layer serves both (a mode of its own costs a layer on every operator); its
    events are what it would record as a mode entered inside this one.

    `rules`: the estimate is for a CUDA card with these library workspace rules
    (`revbench.methods.cuda_terms`): the cuBLAS calls are noted by thread (`blas_calls`),
    a per-call cuBLASLt workspace is written down where the call makes it, and the
    optimizer's host tensors (`host`) are left out, as the card never holds them.
    """

    def __init__(
        self,
        recorder: AllocationRecorder | None = None,
        rules: LibraryRules | None = None,
        host_storages: set[int] = frozenset(),
    ) -> None:
        super().__init__()
        self.recorder = recorder
        self.rules = rules
        self.host_storages = set(host_storages)  # ids of untyped storages on the host
        self.blas_calls: set[tuple[str, str]] = set()  # (thread, "blas" | "lt")
        self.ops: list[tuple] = []
        self.sizes: list[int] = []
        self._count = 0
        self._added = False  # bytes added (or resized) since the last check

    def host(self, tensor: torch.Tensor) -> bool:
        """Whether `tensor` lives on the host in a run on the card: the optimizer's step
        counts (`host_storages`) and what its step makes for them (`is_host_state`).
        Always False for a CPU estimate."""
        if self.rules is None:
            return False
        if id(tensor.untyped_storage()) in self.host_storages:
            return True
        return self._in_opt and is_host_state(tensor)

    def ledger_number(self, tensor: torch.Tensor) -> int | None:
        """The number `tensor`'s storage holds in the ledger; None if it has no entry."""
        winfo, _ = self._WINFO.get(tensor.untyped_storage(), (None, None))
        return getattr(winfo, "ledger_number", None)

    def _update_and_maybe_create_winfos(self, t, reftype, update_existing=False):
        if self.host(t):
            return set()
        return super()._update_and_maybe_create_winfos(t, reftype, update_existing)

    def _update_snap(self, u_type, winfo, old_mem_consumed=None, old_reftype=None) -> None:
        # MemTracker's running totals per category are left out: the ledger is what the
        # peak and breakdown are replayed from (`replay`), and nothing here reads them.
        number = getattr(winfo, "ledger_number", None)  # on the winfo: ids are reused
        if number is None:
            number = winfo.ledger_number = self._count
            self._count += 1
        kind = u_type.name.lower()  # ADD -> "add", as the ledger names them
        old = old_reftype.name if old_reftype is not None else None
        self.ops.append((kind, number, winfo.reftype.name, old))
        if kind in _SIZED:
            self.sizes.append(winfo.size * winfo.element_size)
            self._added = True

    # MemTracker's module hooks, less what only its per-module statistics read (a deep copy
    # of the category counts at every module's entry and exit, the bytes of its inputs and
    # outputs): what they change in the tracking is kept as it is, so the ledger is the same
    # entry for entry. ModTracker, which calls them, is left as it is: its gradient hooks
    # hold some gradients until a module's last one arrives, and so move frees.

    def _pre_fw_hook(self, module, inputs) -> None:
        if module not in self.memory_tracking:
            # First sight: its parameters and buffers, and the hooks that track gradients.
            self._track_module_params_and_buffers(module, install_grad_hooks=True)
            self.memory_tracking[module] = _mt._ModMemStats(type(module).__name__)
        elif self._mod_tracker.is_bw:
            # Called again in the backward: recomputation (activation checkpointing), whose
            # outputs are activations, not temporaries, until its outermost module returns.
            if self._ac_mod is None:
                self._ac_mod = weakref.ref(module)
                self._in_ac = True
        else:
            name = self._mod_tracker.get_known_fqn(module)
            if set(self._mod_tracker.parents) - {name} == {"Global"}:
                raise NotImplementedError("MemTracker tracks one iteration: the root ran twice")

    def _post_fw_hook(self, module, inputs, outputs) -> None:
        if self._mod_tracker.is_bw and self._ac_mod is not None and self._ac_mod() is module:
            self._ac_mod = None
            self._in_ac = False

    def _pre_bw_hook(self, module, args) -> None:
        pass

    def _post_bw_hook(self, module, args) -> None:
        pass

    def _update_peak_stats(self, peak_state) -> None:
        # Only a check after bytes were added since the last check (or the entry) can move
        # the peak: after frees and re-attributions alone the total is at most what the
        # last check saw. Leaving the others out, runs that differ only in where a free
        # lands between operators, or in how often an operator that allocates nothing
        # (prim.device) runs, still line up.
        if self._added:
            self.ops.append((CHECK,))
            self._added = False

    def __enter__(self):
        self.ops.append((ENTER,))
        self._added = False
        entered = super().__enter__()
        if self.recorder is not None:
            self.recorder.start()
        return entered

    def __exit__(self, *exc) -> None:
        try:
            super().__exit__(*exc)
        finally:
            if self.recorder is not None:
                self.recorder.stop()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # MemTracker's dispatch, less what the estimator never meets (DTensor, functional
        # collectives) and its pytree walk over the
        # outputs: the same storages tracked in the same order, 10% less per traced step.
        fake_mode = torch._C._get_dispatch_mode(_FAKE)  # MemTracker's active_fake_mode()
        if func is _DEVICE:
            # Two in three operators of a step: the autograd engine, the optimizer and
            # functionals asking a tensor its device. The same bookkeeping, without walks;
            # a fake tensor's device is answered as FakeTensorMode answers it.
            (tensor,) = args
            if self.recorder is not None:
                self.recorder.note_input(tensor)
            if isinstance(tensor, FakeTensor) and not tensor.fake_mode.in_kernel_invocation:
                out = tensor.fake_device
            else:
                out = func(tensor)
            if fake_mode is self._fake_mode_on_entry:
                self._update_peak_stats(None)
            return out
        if self.recorder is not None:
            self.recorder.note_inputs(args, kwargs)
        out = FAST_OUTPUTS.call_fake(func, args, kwargs)
        tensors = _tensors(out)
        if self.rules is not None:
            on_host = {id(out[i]) for i in host_outputs(func, self.rules.release)}
            tensors = [t for t in tensors if not self.host(t) and id(t) not in on_host]
        if fake_mode is self._fake_mode_on_entry:
            if self._in_opt:
                reftype = _mt._MemRefType.OPT
            elif self._mod_tracker.is_bw and not self._in_ac:
                reftype = _mt._MemRefType.TEMP
            else:
                reftype = _mt._MemRefType.ACT
            for tensor in tensors:
                self._track(reftype, tensor)
            self._update_peak_stats(None)
        if self.recorder is not None:
            self.recorder.note_outputs(tensors)
        if self.rules is not None:
            self._note_blas(func, args, kwargs)
        return out

    def _note_blas(self, func, args, kwargs) -> None:
        kind = blas_call(func, args, kwargs)
        if kind is None:
            return
        # The backward runs on autograd's device thread on a card: its own cuBLAS handle.
        thread = "backward" if torch._C._current_graph_task_id() != -1 else "forward"
        self.blas_calls.add((thread, kind))
        if kind == "lt" and self.rules.lt == "per-call":
            # Allocated inside the call, beside its output, and freed before it returns.
            number = self._count
            self._count += 1
            self.ops.extend([(ADD, number, LIBRARY, None), (CHECK,), (DEL, number, LIBRARY, None)])
            self.sizes.append(self.rules.lt_bytes)
            if self.recorder is not None:
                self.recorder.transient(self.rules.lt_bytes)


_DEVICE = torch.ops.prim.device.default
_FAKE = torch._C._TorchDispatchModeKey.FAKE  # the slot a FakeTensorMode runs in


def _tensors(out) -> list[torch.Tensor]:
    """An operator's output tensors in pytree order: most return one tensor or a flat
    tuple, walked without pytree."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)) and all(
        o is None or isinstance(o, torch.Tensor) for o in out
    ):
        return [o for o in out if o is not None]
    return [leaf for leaf in tree_leaves(out) if isinstance(leaf, torch.Tensor)]


class PeakOnlyMemTracker(_mt.MemTracker):
    """MemTracker keeping only the global peak, which is all revbench reads.

    The stock tracker also updates a per-module peak on every operator by visiting every
    module tracked so far: cost modules x operators, quadratic in depth (a depth-48
    RevViT took minutes; RevBiFPN-S0 at 64 px 278 s, now 15 s). The global peak and its
    snapshot are computed the same way: the bytes are unchanged.
    """

    def _update_peak_stats(self, peak_state) -> None:
        for dev, snap in self._curr_mem_snap.items():
            if self._peak_mem.get(dev, 0) < snap[_mt._TOTAL_KEY]:
                self._peak_mem[dev] = snap[_mt._TOTAL_KEY]
                self._peak_mem_snap[dev] = dict(snap)  # a flat {category: bytes} copy


# --------------------------------------------------------------------------- the loop
