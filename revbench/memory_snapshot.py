"""PyTorch memory snapshots in and out of the caching-allocator model.

Traces are PyTorch's memory-snapshot format (`torch.cuda.memory._snapshot()`, viewable at
https://pytorch.org/memory_viz): `events_from_snapshot` and `real_reserved_from_snapshot`
read a snapshot recorded on a GPU, `replay_snapshot` and `compare_snapshot` set the model
(`revbench.caching_allocator`) against it, and `events_to_snapshot` writes one of the
model's replays. `python -m revbench.allocator FILE` prints the comparison.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .caching_allocator import AllocatorStats, Event, MiB, _Allocator, simulate

_SIZE_MAX_INT64 = -1  # c10's unset max_split_size (SIZE_MAX) as the snapshot pickles it

# -------------------------------------------------------------------- memory snapshots
#
# A snapshot (torch.cuda.memory._snapshot(), pickled by _dump_snapshot) is a dict with
#   segments:       [{device, address, total_size, stream, segment_type ("small"/"large"),
#                     is_expandable, blocks: [{address, size, requested_size,
#                     state ("active_allocated" / "active_pending_free" / "inactive")}]}]
#                   the allocator's state when the snapshot was taken;
#   device_traces:  one list per device of {action, addr, size, stream, time_us, frames}
#                   in order, from when _record_memory_history was enabled (a ring buffer);
#                   alloc and free_* sizes are the requested bytes, segment_* sizes the
#                   segment (or mapped range) bytes;
#   allocator_settings: {max_split_size (bytes, -1 when unset), expandable_segments, ...}.
# Only these fields are read; frames, pool ids and other actions are ignored.


@dataclass(frozen=True)
class RecordedReserved:
    """Reserved bytes a snapshot's trace records (segment_alloc/map minus segment_free/unmap)."""

    start_bytes: int  # when recording began
    peak_bytes: int
    end_bytes: int  # when the snapshot was taken: the sum of its segments


class _SnapshotUnpickler(pickle.Unpickler):
    # Snapshots hold only dicts, lists, tuples, strings and numbers; refuse anything that
    # would run code on load.
    def find_class(self, module: str, name: str):
        if module == "torch.jit._pickle" and name.startswith("build_"):
            return super().find_class(module, name)
        raise ValueError(f"not a memory snapshot: it refers to {module}.{name}")


def load_snapshot(snapshot: dict | str | Path) -> dict:
    """A snapshot dict, or the dict pickled at `snapshot` by `torch.cuda.memory._dump_snapshot`."""
    if isinstance(snapshot, dict):
        return snapshot
    with open(snapshot, "rb") as f:
        data = _SnapshotUnpickler(f).load()
    if not isinstance(data, dict) or "device_traces" not in data:
        raise ValueError(f"{snapshot} is not a memory snapshot (no device_traces)")
    return data


def _device_trace(snapshot: dict, device: int) -> list[dict]:
    traces = snapshot.get("device_traces", [])
    if not 0 <= device < len(traces):
        raise ValueError(f"device {device} is invalid; the snapshot traces {len(traces)} device(s)")
    return traces[device]


def events_from_snapshot(snapshot: dict | str | Path, device: int = 0) -> list[Event]:
    """The allocator events of a snapshot's trace on `device`.

    alloc -> `alloc` (ids numbered in order), free_completed -> `free` (the block is reusable
    from then on), each run of segment_free/segment_unmap -> one `empty_cache` (a release
    during an out-of-memory retry reads as one too). Blocks allocated before recording began
    (freed in the trace without their alloc, or still allocated in the final segments) come
    first, as allocations in address order: the model packs them afresh, where the real
    allocator may hold them in fuller segments, so record from the start of the process for
    an exact comparison.
    """
    snap = load_snapshot(snapshot)
    trace = _device_trace(snap, device)
    live: set[int] = set()
    earlier: dict[int, tuple[int, int]] = {}  # address -> (requested bytes, stream)
    for entry in trace:
        if entry["action"] == "alloc":
            live.add(entry["addr"])
        elif entry["action"] == "free_completed":
            if entry["addr"] in live:
                live.remove(entry["addr"])
            else:
                earlier[entry["addr"]] = (entry["size"], entry["stream"])
    for segment in snap.get("segments", []):
        if segment.get("device", 0) != device:
            continue
        address = segment["address"]
        for block in segment["blocks"]:
            address = block.get("address", address)  # older snapshots leave it implicit
            if block["state"] != "inactive" and address not in live:
                requested = block.get("requested_size") or block["size"]
                earlier[address] = (requested, segment["stream"])
            address += block["size"]

    events = [
        Event("alloc", i, size, stream)
        for i, (size, stream) in enumerate(earlier[address] for address in sorted(earlier))
    ]
    ids = {address: i for i, address in enumerate(sorted(earlier))}
    next_id = len(ids)
    releasing = False
    for entry in trace:
        action = entry["action"]
        if action in ("segment_free", "segment_unmap"):
            if not releasing:
                events.append(Event("empty_cache"))
            releasing = True
        elif action == "alloc":
            ids[entry["addr"]] = next_id
            events.append(Event("alloc", next_id, entry["size"], entry["stream"]))
            next_id += 1
            releasing = False
        elif action == "free_completed":
            events.append(Event("free", ids.pop(entry["addr"])))
            releasing = False
    return events


def real_reserved_from_snapshot(snapshot: dict | str | Path, device: int = 0) -> RecordedReserved:
    """The reserved bytes the real allocator held over the trace on `device`."""
    snap = load_snapshot(snapshot)
    sign = {"segment_alloc": 1, "segment_map": 1, "segment_free": -1, "segment_unmap": -1}
    deltas = [
        sign[e["action"]] * e["size"] for e in _device_trace(snap, device) if e["action"] in sign
    ]
    end = sum(s["total_size"] for s in snap.get("segments", []) if s.get("device", 0) == device)
    reserved = peak = start = end - sum(deltas)
    for delta in deltas:
        reserved += delta
        peak = max(peak, reserved)
    return RecordedReserved(start_bytes=start, peak_bytes=peak, end_bytes=end)


def replay_snapshot(
    snapshot: dict | str | Path, device: int = 0
) -> tuple[AllocatorStats, RecordedReserved]:
    """Simulated vs recorded: the trace replayed under the snapshot's allocator settings."""
    snap = load_snapshot(snapshot)
    settings = snap.get("allocator_settings", {})
    max_split = int(settings.get("max_split_size", _SIZE_MAX_INT64))
    simulated = simulate(
        events_from_snapshot(snap, device),
        max_split_size_mb=max_split // MiB if 0 < max_split < 1 << 63 else None,
        expandable_segments=bool(settings.get("expandable_segments", False)),
    )
    return simulated, real_reserved_from_snapshot(snap, device)


def compare_snapshot(snapshot: dict | str | Path, device: int = 0) -> str:
    """ "Simulated vs real reserved" on a recorded snapshot, as lines of text."""
    simulated, real = replay_snapshot(snapshot, device)
    diff = simulated.peak_reserved_bytes - real.peak_bytes
    pct = f" ({100 * diff / real.peak_bytes:+.1f}%)" if real.peak_bytes else ""
    return "\n".join(
        [
            f"real reserved peak       {_bytes(real.peak_bytes)}  (at start "
            f"{_bytes(real.start_bytes)}, at end {_bytes(real.end_bytes)})",
            f"simulated reserved peak  {_bytes(simulated.peak_reserved_bytes)}  "
            f"difference {diff:+,d} B{pct}",
            f"simulated allocated peak {_bytes(simulated.peak_allocated_bytes)}",
            f"simulated fragmentation  {_bytes(simulated.fragmentation_bytes)}  "
            "(reserved minus allocated at the reserved peak)",
        ]
    )


def _bytes(n: int) -> str:
    return f"{n:>15,d} B = {n / 2**30:8.3f} GiB"


def events_to_snapshot(
    events: Iterable[Event],
    *,
    device: int = 0,
    max_split_size_mb: int | None = None,
    expandable_segments: bool = False,
) -> dict:
    """A snapshot dict of the modelled allocator replaying `events`, for memory_viz.

    Addresses are the model's synthetic ones; the trace holds the alloc, free_requested,
    free_completed and segment actions the model took, the segments its final state.
    Pickle it (`pickle.dump`) and load the file at https://pytorch.org/memory_viz.
    """
    allocator = _Allocator(max_split_size_mb, expandable_segments, record=True)
    allocator.replay(events)
    segments = []
    for segment in allocator.stats().segments:
        allocated = sum(b.size for b in segment.blocks if b.alloc_id is not None)
        segments.append(
            {
                "device": device,
                "address": segment.address,
                "total_size": segment.size,
                "allocated_size": allocated,
                "active_size": allocated,
                "requested_size": sum(b.requested_size for b in segment.blocks),
                "stream": segment.stream,
                "segment_type": segment.pool,
                "segment_pool_id": (0, 0),
                "is_expandable": segment.expandable,
                "frames": [],
                "blocks": [
                    {
                        "address": b.address,
                        "size": b.size,
                        "requested_size": b.requested_size,
                        "state": "inactive" if b.alloc_id is None else "active_allocated",
                        "frames": [],
                    }
                    for b in segment.blocks
                ],
            }
        )
    return {
        "segments": segments,
        "device_traces": [[] for _ in range(device)] + [allocator.trace],
        "allocator_settings": {
            "max_split_size": _SIZE_MAX_INT64
            if max_split_size_mb is None
            else max_split_size_mb * MiB,
            "expandable_segments": bool(expandable_segments),
        },
    }
