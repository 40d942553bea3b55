"""Reserved memory without a GPU: a model of PyTorch's CUDA caching allocator.

`torch.cuda.max_memory_allocated()` counts the blocks handed to tensors; what the GPU holds
(what nvidia-smi shows, less the CUDA context) is what the caching allocator *reserved*:
whole segments from cudaMalloc, carved into blocks and cached after their tensors die.
`simulate` replays allocation and free events through a model of c10's
`DeviceCachingAllocator` (c10/cuda/CUDACachingAllocator.cpp) and reports both peaks.

The rules, with c10's constant names::

    size    = max(512, 512 * ceil(request / 512))                     kMinBlockSize
    pool    = small if size <= 1 MiB, else large                      kSmallSize
    segment = 2 MiB                          small pool               kSmallBuffer
            = 20 MiB                         large, size < 10 MiB     kLargeBuffer, kMinLargeAlloc
            = 2 MiB * ceil(size / 2 MiB)     large, size >= 10 MiB    kRoundLarge

- reuse: the smallest cached free block of the same pool and stream with block >= size,
  the lower address on a tie (c10 orders free blocks by stream, size, address);
- split: the rest of the block becomes a free block when it is >= 512 B (small pool) or
  > 1 MiB with size < max_split_size (large pool); otherwise the whole block is handed out
  and counted as allocated, as c10 counts it;
- max_split_size (`max_split_size_mb`): a request below it never takes a cached block at or
  above it; a request at or above it takes a cached block only if block < size + 20 MiB
  (c10's max_non_split_rounding_size, default kLargeBuffer);
- free: the block merges with free neighbours in its segment; segments stay reserved until
  an `empty_cache` event, which releases every segment without an allocated block.

`expandable_segments=True` models c10's expandable segments: one virtual range per pool and
stream, grown by mapping pages (2 MiB in the small pool, 20 MiB in the large pool). A request
no free block fits takes the free block at the mapped end plus enough new pages; best fit
treats that end block as the size it can grow to, so cached holes are used first; splits
keep any rest >= 512 B in both pools; reserved = mapped bytes; `empty_cache` unmaps every
whole free page.

Approximations (what the model leaves out): the device's memory limit, so no OOM and no
retry that frees cached blocks (`num_alloc_retries`), and no garbage_collection_threshold;
`record_stream` (a block is reusable at its free); roundup_power2_divisions; CUDA-graph
private pools. New segments get increasing synthetic addresses, so equal-size free blocks in
different segments go to the older segment, where real cudaMalloc addresses may order them
otherwise. Expandable address space is unbounded per pool and stream (c10 reserves 1.125x
the device memory per range).

A trace to replay comes from a GPU's memory snapshot (`revbench.memory_snapshot`) or from a
step run on CPU or fake tensors (`revbench.methods.recorder`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MiB = 1 << 20
MIN_BLOCK = 512  # kMinBlockSize: every block is a multiple of it
SMALL_SIZE = MiB  # kSmallSize: largest request of the small pool
SMALL_BUFFER = 2 * MiB  # kSmallBuffer: small-pool segment, and its expandable page
LARGE_BUFFER = 20 * MiB  # kLargeBuffer: segment for large requests < 10 MiB, expandable page
MIN_LARGE_ALLOC = 10 * MiB  # kMinLargeAlloc: from here a segment is the request rounded
ROUND_LARGE = 2 * MiB  # kRoundLarge
ACTIONS = ("alloc", "free", "empty_cache", "reset_peak")

_BASE_ADDRESS = 0x7F00_0000_0000  # where synthetic segment addresses start
_EXPANDABLE_PAGES = 1 << 20  # virtual pages per expandable range: never exhausted here


@dataclass(frozen=True)
class Event:
    """One call into the allocator.

    `alloc` takes `id`, `size` (requested bytes; the allocator rounds) and `stream`; `free`
    takes the `id` of a live allocation; `empty_cache` is `torch.cuda.empty_cache()`;
    `reset_peak` is `torch.cuda.reset_peak_memory_stats()`.
    """

    action: str
    id: int | None = None
    size: int = 0
    stream: int = 0


@dataclass(frozen=True)
class BlockState:
    address: int
    size: int  # bytes the block spans
    requested_size: int  # bytes asked for (0 when free)
    alloc_id: int | None  # None: a cached free block


@dataclass(frozen=True)
class SegmentState:
    address: int
    size: int
    stream: int
    pool: str  # "small" or "large"
    expandable: bool
    blocks: tuple[BlockState, ...]


@dataclass(frozen=True)
class AllocatorStats:
    """What the allocator held over a replayed trace (bytes as torch.cuda reports them)."""

    peak_allocated_bytes: int  # max_memory_allocated: blocks handed out, rounded
    peak_reserved_bytes: int  # max_memory_reserved: segments held
    allocated_at_reserved_peak_bytes: int  # the most allocated while reserved was at its peak
    num_device_allocs: int  # cudaMalloc (or page-map) calls
    allocated_bytes: int  # at the end of the trace
    reserved_bytes: int  # at the end of the trace
    segments: tuple[SegmentState, ...]  # the final layout, by address

    @property
    def fragmentation_bytes(self) -> int:
        """Reserved but not allocated at the reserved peak: cached free blocks and slack.

        Reserved stays at its peak for a while (segments are kept); this is the gap at the
        fullest moment of that stretch.
        """
        return self.peak_reserved_bytes - self.allocated_at_reserved_peak_bytes

    @property
    def num_segments(self) -> int:
        """Segments held at the end (under expandable segments: contiguous mapped ranges)."""
        return len(self.segments)


def round_size(nbytes: int) -> int:
    """Bytes the allocator hands out for a request of `nbytes`."""
    return max(MIN_BLOCK, -(-nbytes // MIN_BLOCK) * MIN_BLOCK)


def segment_size(size: int) -> int:
    """Bytes of the segment c10 allocates for a rounded request no cached block fits."""
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return -(-size // ROUND_LARGE) * ROUND_LARGE


def peak_live_bytes(events: Iterable[Event]) -> int:
    """The most bytes live tensors held at once, each rounded to 512 B: what a tracker of
    tensors (MemTracker, the estimator's `peak_bytes`) counts. The allocator's allocated peak
    (`simulate`) can be higher: a cached large-pool block is handed out whole when the rest
    would be 1 MiB or less, and c10 counts all of it as allocated."""
    sizes: dict[Any, int] = {}
    live = peak = 0
    for event in events:
        if event.action == "alloc":
            sizes[event.id] = round_size(event.size)
            live += sizes[event.id]
            peak = max(peak, live)
        elif event.action == "free":
            live -= sizes.pop(event.id)
        elif event.action == "reset_peak":
            peak = live
    return peak


def simulate(
    events: Iterable[Event],
    *,
    max_split_size_mb: int | None = None,
    expandable_segments: bool = False,
) -> AllocatorStats:
    """Replay `events` through the caching-allocator model (see the module docstring)."""
    allocator = _Allocator(max_split_size_mb, expandable_segments)
    allocator.replay(events)
    return allocator.stats()


# ----------------------------------------------------------------------------- the model


class _Segment:
    __slots__ = ("address", "size", "stream", "small", "page", "head")

    def __init__(self, address: int, size: int, stream: int, small: bool, page: int | None):
        self.address, self.size, self.stream, self.small = address, size, stream, small
        self.page = page  # page size of an expandable range; None for a cudaMalloc segment
        self.head: _Block | None = None


class _Block:
    __slots__ = ("address", "size", "segment", "prev", "next", "alloc_id", "requested", "mapped")

    def __init__(self, address: int, size: int, segment: _Segment, mapped: bool = True):
        self.address, self.size, self.segment, self.mapped = address, size, segment, mapped
        self.prev: _Block | None = None
        self.next: _Block | None = None
        self.alloc_id: int | None = None
        self.requested = 0

    def link_after(self, block: _Block) -> None:
        """Insert self right after `block` in its segment."""
        self.prev, self.next = block, block.next
        if block.next is not None:
            block.next.prev = self
        block.next = self


class _FreeBlocks:
    """Cached free blocks of one pool and stream, ordered by (size, address) as c10's set."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, int]] = []
        self.by_address: dict[int, _Block] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def at(self, i: int) -> _Block:
        return self.by_address[self.keys[i][1]]

    def first_fit(self, size: int) -> int:
        return bisect.bisect_left(self.keys, (size, -1))

    def add(self, block: _Block) -> None:
        bisect.insort(self.keys, (block.size, block.address))
        self.by_address[block.address] = block

    def remove(self, block: _Block) -> None:
        del self.keys[bisect.bisect_left(self.keys, (block.size, block.address))]
        del self.by_address[block.address]


class _Allocator:
    def __init__(self, max_split_size_mb: int | None, expandable: bool, record: bool = False):
        if max_split_size_mb is not None and max_split_size_mb < LARGE_BUFFER // MiB:
            raise ValueError(
                f"max_split_size_mb={max_split_size_mb} is invalid; PyTorch requires at least "
                f"{LARGE_BUFFER // MiB}, or None for no limit"
            )
        self.max_split = float("inf") if max_split_size_mb is None else max_split_size_mb * MiB
        self.expandable = bool(expandable)
        self.free_blocks: dict[tuple[bool, int], _FreeBlocks] = {}  # (small, stream) -> blocks
        self.segments: list[_Segment] = []  # cudaMalloc segments and expandable ranges
        self.live: dict[Any, _Block] = {}
        self.next_address = _BASE_ADDRESS
        self.allocated = self.reserved = self.device_allocs = 0
        self.peak_allocated = self.peak_reserved = self.allocated_at_peak = 0
        self.trace: list[dict] | None = [] if record else None  # snapshot trace entries

    def replay(self, events: Iterable[Event]) -> None:
        for event in events:
            if event.action == "alloc":
                self.malloc(event.id, event.size, event.stream)
            elif event.action == "free":
                self.free(event.id)
            elif event.action == "empty_cache":
                self.empty_cache()
            elif event.action == "reset_peak":
                self.peak_allocated = self.allocated_at_peak = self.allocated
                self.peak_reserved = self.reserved
            else:
                raise ValueError(f"event action {event.action!r} is invalid; valid: {ACTIONS}")

    # ------------------------------------------------------------------ malloc and free

    def malloc(self, alloc_id, request: int, stream: int) -> None:
        if alloc_id in self.live:
            raise ValueError(f"alloc of id {alloc_id!r}, which is already live")
        if request <= 0:
            raise ValueError(f"alloc of {request} bytes (id {alloc_id!r}); sizes must be > 0")
        size = round_size(request)
        small = size <= SMALL_SIZE
        free = self.free_blocks.setdefault((small, stream), _FreeBlocks())
        block = self._take_cached(free, size)
        if block is None:
            block = (
                self._grow(small, stream, size)
                if self.expandable
                else self._cudamalloc(small, stream, size)
            )
        rest = block.size - size
        if block.segment.small or self.expandable:
            split = rest >= MIN_BLOCK
        else:
            split = size < self.max_split and rest > SMALL_SIZE
        if split:
            remainder = _Block(block.address + size, rest, block.segment)
            remainder.link_after(block)
            block.size = size
            free.add(remainder)
        block.alloc_id, block.requested = alloc_id, request
        self.live[alloc_id] = block
        self.allocated += block.size
        self._record("alloc", block.address, request, stream)
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        if self.reserved > self.peak_reserved:
            self.peak_reserved, self.allocated_at_peak = self.reserved, self.allocated
        elif self.reserved == self.peak_reserved:
            self.allocated_at_peak = max(self.allocated_at_peak, self.allocated)

    def free(self, alloc_id) -> None:
        block = self.live.pop(alloc_id, None)
        if block is None:
            raise ValueError(f"free of id {alloc_id!r}, which is not a live allocation")
        self.allocated -= block.size
        segment = block.segment
        self._record("free_requested", block.address, block.requested, segment.stream)
        self._record("free_completed", block.address, block.requested, segment.stream)
        block.alloc_id, block.requested = None, 0
        free = self.free_blocks[(segment.small, segment.stream)]
        self._merge(block, block.prev, free)
        self._merge(block, block.next, free)
        free.add(block)

    def _take_cached(self, free: _FreeBlocks, size: int) -> _Block | None:
        i = free.first_fit(size)
        if i == len(free):
            return None
        if self.expandable:
            # A block followed by unmapped pages can grow: best fit counts it at that size,
            # so a cached hole that fits is taken before the end of the mapped range.
            while i + 1 < len(free) and _growable(free.at(i + 1)) < _growable(free.at(i)):
                i += 1
        block = free.at(i)
        if size < self.max_split <= block.size:
            return None  # an oversize block is kept for oversize requests
        if size >= self.max_split and block.size >= size + LARGE_BUFFER:
            return None  # an oversize block is not handed out more than 20 MiB too big
        free.remove(block)
        return block

    def _merge(self, dst: _Block, src: _Block | None, free: _FreeBlocks) -> None:
        """Fold free neighbour `src` into `dst` (both mapped or both unmapped)."""
        if src is None or src.alloc_id is not None or src.mapped != dst.mapped:
            return
        if src.mapped:
            free.remove(src)
        if src is dst.prev:
            dst.address, dst.prev = src.address, src.prev
            if src.prev is None:
                dst.segment.head = dst
            else:
                src.prev.next = dst
        else:
            dst.next = src.next
            if src.next is not None:
                src.next.prev = dst
        dst.size += src.size

    # -------------------------------------------------------------- segments and pages

    def _new_segment(self, size: int, stream: int, small: bool, page: int | None) -> _Segment:
        segment = _Segment(self.next_address, size, stream, small, page)
        segment.head = _Block(segment.address, size, segment, mapped=page is None)
        self.next_address += size
        self.segments.append(segment)
        return segment

    def _cudamalloc(self, small: bool, stream: int, size: int) -> _Block:
        nbytes = segment_size(size)
        segment = self._new_segment(nbytes, stream, small, page=None)
        self.reserved += nbytes
        self.device_allocs += 1
        self._record("segment_alloc", segment.address, nbytes, stream)
        return segment.head

    def _grow(self, small: bool, stream: int, size: int) -> _Block:
        """An expandable block of >= `size` bytes: a free end block plus newly mapped pages."""
        free = self.free_blocks[(small, stream)]
        # c10 looks at unmapped ranges by address, each with the free block just before it.
        candidate = None
        for segment in self.segments:
            block = segment.head if (segment.small, segment.stream) == (small, stream) else None
            while block is not None and candidate is None:
                if not block.mapped:
                    start = block.prev if block.prev and block.prev.alloc_id is None else block
                    if _room(start, size) >= size:
                        candidate = start
                block = block.next
        if candidate is None:
            page = SMALL_BUFFER if small else LARGE_BUFFER
            candidate = self._new_segment(page * _EXPANDABLE_PAGES, stream, small, page).head
        if not candidate.mapped:
            candidate = self._map(candidate, min(candidate.size, size), free)
        while candidate.size < size:
            unmapped = candidate.next
            candidate = self._map(unmapped, min(size - candidate.size, unmapped.size), free)
        free.remove(candidate)
        return candidate

    def _map(self, block: _Block, size: int, free: _FreeBlocks) -> _Block:
        """Map whole pages at the start of unmapped `block` covering `size` bytes."""
        page = block.segment.page
        nbytes = -(-size // page) * page
        if nbytes < block.size:
            _Block(block.address + nbytes, block.size - nbytes, block.segment, False).link_after(
                block
            )
            block.size = nbytes
        address = block.address
        block.mapped = True
        self._merge(block, block.prev, free)
        self._merge(block, block.next, free)
        free.add(block)
        self.reserved += nbytes
        self.device_allocs += 1
        self._record("segment_map", address, nbytes, block.segment.stream)
        return block

    def empty_cache(self) -> None:
        # c10 releases the large pool, then the small one, each in (stream, size, address)
        # order: a cudaMalloc segment whose single block is free, or whole free pages.
        for small in (False, True):
            for stream in sorted(s for pool_small, s in self.free_blocks if pool_small == small):
                free = self.free_blocks[(small, stream)]
                for block in [free.at(i) for i in range(len(free))]:
                    if self.expandable:
                        self._unmap(block, free)
                    elif block.prev is None and block.next is None:
                        free.remove(block)
                        self.segments.remove(block.segment)
                        self.reserved -= block.size
                        self._record("segment_free", block.address, block.size, stream)

    def _unmap(self, block: _Block, free: _FreeBlocks) -> None:
        segment = block.segment
        page, base, end = segment.page, segment.address, block.address + block.size
        first = base + -(-(block.address - base) // page) * page
        last = base + (end - base) // page * page
        if first >= last:
            return
        free.remove(block)
        if first > block.address:
            before = _Block(block.address, first - block.address, segment)
            if block.prev is None:
                segment.head = before
            else:
                block.prev.next = before
            before.prev, before.next, block.prev = block.prev, block, before
            free.add(before)
        if last < end:
            after = _Block(last, end - last, segment)
            after.link_after(block)
            free.add(after)
        block.address, block.size, block.mapped = first, last - first, False
        self._merge(block, block.prev, free)
        self._merge(block, block.next, free)
        self.reserved -= last - first
        self._record("segment_unmap", first, last - first, segment.stream)
        if block.prev is None and block.next is None:
            self.segments.remove(segment)  # nothing mapped: c10 frees the address range too

    # ------------------------------------------------------------------------- results

    def _record(self, action: str, address: int, size: int, stream: int) -> None:
        if self.trace is not None:
            self.trace.append(
                {
                    "action": action,
                    "addr": address,
                    "size": size,
                    "stream": stream,
                    "time_us": len(self.trace),
                    "frames": [],
                }
            )

    def stats(self) -> AllocatorStats:
        return AllocatorStats(
            peak_allocated_bytes=self.peak_allocated,
            peak_reserved_bytes=self.peak_reserved,
            allocated_at_reserved_peak_bytes=self.allocated_at_peak,
            num_device_allocs=self.device_allocs,
            allocated_bytes=self.allocated,
            reserved_bytes=self.reserved,
            segments=tuple(self._segment_states()),
        )

    def _segment_states(self) -> Iterable[SegmentState]:
        # One state per contiguous mapped range, as c10's snapshot() reports segments.
        for segment in sorted(self.segments, key=lambda s: s.address):
            blocks: list[BlockState] = []
            block = segment.head
            while block is not None:
                if block.mapped:
                    blocks.append(
                        BlockState(block.address, block.size, block.requested, block.alloc_id)
                    )
                if blocks and (not block.mapped or block.next is None):
                    yield SegmentState(
                        address=blocks[0].address,
                        size=sum(b.size for b in blocks),
                        stream=segment.stream,
                        pool="small" if segment.small else "large",
                        expandable=segment.page is not None,
                        blocks=tuple(blocks),
                    )
                    blocks = []
                block = block.next


def _growable(block: _Block) -> int:
    """Size `block` can reach without a cudaMalloc: itself plus unmapped pages after it."""
    after = block.next
    return block.size + (after.size if after is not None and not after.mapped else 0)


def _room(block: _Block | None, size: int) -> int:
    """Bytes of consecutive free or unmapped blocks from `block`, counted up to `size`."""
    total = 0
    while block is not None and block.alloc_id is None and total < size:
        total += block.size
        block = block.next
    return total
