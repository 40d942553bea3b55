"""A tracked step's memory history, replayed at its own batch size or extrapolated to another.

The estimator (`revbench.methods.estimate`) runs a step under MemTracker and under the
allocation recorder. Instead of reading MemTracker's peak, it keeps the tracker's ledger:
every change MemTracker makes to its per-category byte counts (a storage added, deleted,
resized or re-attributed, such as a gradient becoming `gradients` once accumulated into
`.grad`) and every point where MemTracker compares the running total with its peak (after
each operator). `replay` walks the ledger as MemTracker does: the same 512-byte rounding,
the same first-strictly-higher tie rule, so the peak and its breakdown are MemTracker's to
the byte.

Extrapolation. Where a step runs the same operators at every batch size, two traces at
batch sizes b1 and b2 hold the same entries in the same order and differ only in sizes,
each affine in the batch: a storage of s1 bytes at b1 and s2 at b2 holds

    s(b) = s1 + (s2 - s1) * (b - b1) / (b2 - b1)

bytes at b. Sizes are kept before rounding, so the trace at b follows exactly and is then
replayed (rounded) like a traced one: its allocated peak, the breakdown at that peak and,
through the caching-allocator model, its reserved peak. Traces that do not line up entry
for entry, or a size that would not be a whole, positive number of bytes, give no
extrapolation (`extrapolate` returns None) and the step is traced at that batch instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..caching_allocator import AllocatorStats, Event

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
    # Not MemTracker's: what a CUDA library allocates for itself through the caching
    # allocator (cuBLAS's workspaces: revbench.methods.cuda_terms).
    "LIB": "library_workspace",
}
LIBRARY = "LIB"

# Ledger entry kinds: MemTracker's update types, plus its two peak comparisons.
ADD, DEL, REF, SIZE = "add", "del", "ref", "size"
CHECK = "check"  # after an operator: a new peak if the total is strictly higher
ENTER = "enter"  # entering the tracker: the peak starts at the current total
_SIZED = (ADD, SIZE)  # the entries that carry a storage's bytes


@dataclass(frozen=True)
class StepTrace:
    """One tracked step at one batch size: MemTracker's ledger and the allocator events."""

    batch_size: int
    ops: tuple[tuple, ...]  # LedgerTracker.ops
    sizes: tuple[int, ...]  # LedgerTracker.sizes: bytes before rounding
    events: tuple[Event, ...] | None  # the allocator events; None: not recorded

    def lines_up_with(self, other: StepTrace) -> bool:
        """Whether both traces hold the same entries in the same order, sizes aside."""
        if self.ops != other.ops or len(self.sizes) != len(other.sizes):
            return False
        if self.events is None or other.events is None:
            return self.events is other.events
        return len(self.events) == len(other.events) and all(
            (a.action, a.id, a.stream) == (b.action, b.id, b.stream)
            for a, b in zip(self.events, other.events)
        )


def with_kept_blocks(
    trace: StepTrace, blocks: Sequence[int], category: str, events_at: int
) -> StepTrace:
    """`trace` with `blocks` (bytes each) alive through the whole step in `category`, as
    memory a first step allocated and the process keeps (a library's workspace): in the
    ledger before the tracker is entered, and among the allocator events at `events_at`
    (where a first step made them among the tensors alive at the step's start)."""
    if not blocks:
        return trace
    adds = tuple((ADD, -1 - i, category, None) for i in range(len(blocks)))
    events = trace.events
    if events is not None:
        first_id = 1 + max((e.id for e in events if e.id is not None), default=-1)
        made = tuple(Event("alloc", first_id + i, n, 0) for i, n in enumerate(blocks))
        events = events[:events_at] + made + events[events_at:]
    return StepTrace(trace.batch_size, adds + trace.ops, tuple(blocks) + trace.sizes, events)


def without_storages(trace: StepTrace, numbers: set[int], alloc_ids: set[int]) -> StepTrace:
    """`trace` as if the storages numbered `numbers` in the ledger (and allocated as
    `alloc_ids` among its events) had never existed: their entries gone, every other storage
    numbered as a run without them numbers it (in order, with no gaps), so the result is
    the trace of that run entry for entry.

    For storages that live through the step untouched (optimizer state no gradient reaches):
    their only entries are the additions made before the step."""
    if not numbers and not alloc_ids:
        return trace
    ops: list[tuple] = []
    sizes: list[int] = []
    at = iter(trace.sizes)
    for op in trace.ops:
        size = next(at) if op[0] in _SIZED else None
        if op[0] in (CHECK, ENTER):
            ops.append(op)
            continue
        if op[1] in numbers:
            continue
        ops.append((op[0], _renumbered(op[1], numbers), *op[2:]))
        if size is not None:
            sizes.append(size)
    events = trace.events
    if events is not None:
        events = tuple(
            Event(e.action, _renumbered(e.id, alloc_ids), e.size, e.stream)
            for e in events
            if e.id is None or e.id not in alloc_ids
        )
    return StepTrace(trace.batch_size, tuple(ops), tuple(sizes), events)


def _renumbered(number: int | None, gone: set[int]) -> int | None:
    # Numbers are handed out in order from zero: a run without `gone` hands each survivor
    # its number less the gone ones before it.
    if number is None or number < 0:
        return number
    return number - sum(1 for n in gone if n < number)


def in_settled_order(entries: Sequence, is_free, key) -> tuple:
    """`entries` with each run of consecutive frees sorted by `key`.

    Storages freed together (a container released, autocast's cast cache cleared at the
    end of its region) die in the order of a hash table keyed by memory addresses, which
    changes from process to process. Nothing reads the total between them (the ledger
    checks for a peak only after additions, and the allocator model's pools do not depend
    on the order frees arrive in), so ordering them by storage makes one step give one
    trace, run after run, and two batch sizes line up."""
    out: list = []
    run: list = []
    for entry in entries:
        if is_free(entry):
            run.append(entry)
            continue
        out.extend(sorted(run, key=key))
        run = []
        out.append(entry)
    out.extend(sorted(run, key=key))
    return tuple(out)


def extrapolate(first: StepTrace, second: StepTrace, batch_size: int) -> StepTrace | None:
    """The trace at `batch_size` from two that line up (see the module docstring), or None
    where they do not or a size would not be a whole, positive number of bytes."""
    if first.batch_size == second.batch_size or not first.lines_up_with(second):
        return None
    sizes = _affine(first.sizes, second.sizes, first.batch_size, second.batch_size, batch_size)
    if sizes is None:
        return None
    events = None
    if first.events is not None:
        alloc_sizes = _affine(
            [e.size for e in first.events if e.action == "alloc"],
            [e.size for e in second.events if e.action == "alloc"],
            first.batch_size,
            second.batch_size,
            batch_size,
        )
        if alloc_sizes is None:
            return None
        at = iter(alloc_sizes)
        events = tuple(
            Event(e.action, e.id, next(at), e.stream) if e.action == "alloc" else e
            for e in first.events
        )
    return StepTrace(batch_size, first.ops, tuple(sizes), events)


def _affine(
    at_b1: Sequence[int], at_b2: Sequence[int], b1: int, b2: int, b: int
) -> list[int] | None:
    # s(b) * (b2 - b1) = s1 * (b2 - b1) + (s2 - s1) * (b - b1), in integers: exact or None.
    span = b2 - b1
    sizes = []
    for s1, s2 in zip(at_b1, at_b2):
        scaled = s1 * span + (s2 - s1) * (b - b1)
        if scaled % span or scaled < 0 or (scaled == 0 and (s1 or s2)):
            return None  # not whole bytes, or a storage that would vanish at b
        sizes.append(scaled // span)
    return sizes


def rounded(nbytes: int) -> int:
    """Bytes a storage of `nbytes` occupies on a CUDA device (MemTracker's rounding)."""
    return -(-nbytes // CUDA_BLOCK_BYTES) * CUDA_BLOCK_BYTES


@dataclass(frozen=True)
class LedgerPeak:
    peak_bytes: int
    by_category: dict[str, int]  # bytes per category at the moment of the peak


def replay(trace: StepTrace) -> LedgerPeak:
    """MemTracker's peak and its breakdown, from the ledger (MemTracker's own rules).

    The running counts per category change as MemTracker's `_update_snap` changes them; a
    device whose total drops to zero is forgotten and its counts start again from zero; the
    peak is taken at entry, then at each check where the total is strictly higher.
    """
    names = list(CATEGORIES)
    index = {name: i for i, name in enumerate(names)}
    counts = [0] * len(names)
    total = 0
    present = False  # whether MemTracker holds an entry for the device
    mem: dict[int, int] = {}  # storage number -> rounded bytes MemTracker counts for it
    peak, at_peak = 0, None
    sizes = iter(trace.sizes)
    for op in trace.ops:
        kind = op[0]
        if kind == CHECK:
            if present and peak < total:
                peak, at_peak = total, list(counts)
            continue
        if kind == ENTER:
            peak, at_peak = (total, list(counts)) if present else (0, None)
            continue
        _, number, category, old = op
        present = True
        if kind == ADD:
            m = mem[number] = rounded(next(sizes))
            counts[index[category]] += m
            total += m
        elif kind == DEL:
            m = mem[number]
            counts[index[category]] -= m
            total -= m
        elif kind == REF:
            m = mem[number]
            counts[index[old]] -= m
            counts[index[category]] += m
        else:  # SIZE
            m, before = rounded(next(sizes)), mem.get(number, 0)
            mem[number] = m
            counts[index[category]] += m - before
            total += m - before
        if kind in (DEL, SIZE) and total == 0:
            present, counts = False, [0] * len(names)
    if at_peak is None:
        raise ValueError("the trace holds no tracked memory")
    return LedgerPeak(
        peak_bytes=peak,
        by_category={CATEGORIES[name]: at_peak[i] for i, name in enumerate(names)},
    )


@dataclass(frozen=True)
class MemoryEstimate:
    peak_bytes: int
    by_category: dict[str, int]  # bytes per category at the moment of the peak; sums to peak
    # The caching-allocator model (revbench.caching_allocator) replaying the tracked step's
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
