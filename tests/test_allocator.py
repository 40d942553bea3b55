"""The caching-allocator model on hand-made traces, snapshot I/O, and CPU/fake capture.

Every expected figure is derived by hand in the comments from c10's rules: requests round up
to 512 B; <= 1 MiB is the small pool (2 MiB segments); larger requests get a 20 MiB segment
below 10 MiB, else the request rounded up to 2 MiB; a block is split when the rest is
>= 512 B (small pool) or > 1 MiB (large pool).
"""

from __future__ import annotations

import pickle
import random

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from revbench.caching_allocator import Event, simulate
from revbench.memory_snapshot import (
    events_from_snapshot,
    events_to_snapshot,
    load_snapshot,
    real_reserved_from_snapshot,
    replay_snapshot,
)
from revbench.methods.recorder import trace_step

MiB = 1 << 20
EMPTY_CACHE = Event("empty_cache")


def alloc(alloc_id: int, size: int, stream: int = 0) -> Event:
    return Event("alloc", alloc_id, size, stream)


def free(alloc_id: int) -> Event:
    return Event("free", alloc_id)


def offsets_mib(segment) -> list[float]:
    return [(b.address - segment.address) / MiB for b in segment.blocks]


# ------------------------------------------------------------------ segments and pools


def test_one_small_allocation_reserves_a_small_segment():
    # 100 B -> a 512 B block carved from a new 2 MiB small-pool segment.
    stats = simulate([alloc(0, 100)])
    assert stats.peak_allocated_bytes == 512
    assert stats.peak_reserved_bytes == 2 * MiB
    assert stats.fragmentation_bytes == 2 * MiB - 512
    assert stats.num_segments == 1
    assert stats.segments[0].pool == "small"


@pytest.mark.parametrize(
    "request_bytes, segment_bytes, allocated_bytes",
    [
        (100, 2 * MiB, 512),  # small pool
        (1 * MiB, 2 * MiB, 1 * MiB),  # the largest small request
        (1 * MiB + 1, 20 * MiB, 1 * MiB + 512),  # large pool, < 10 MiB: 20 MiB, rest split
        (10 * MiB - 512, 20 * MiB, 10 * MiB - 512),  # still < 10 MiB
        (10 * MiB, 10 * MiB, 10 * MiB),  # from 10 MiB: the request rounded to 2 MiB
        (12 * MiB, 12 * MiB, 12 * MiB),
        (12 * MiB + 1, 14 * MiB, 12 * MiB + 512),  # rest 2 MiB - 512 > 1 MiB: split
        (13 * MiB + 1, 14 * MiB, 14 * MiB),  # rest 1 MiB - 512 <= 1 MiB: whole block
    ],
)
def test_segment_size_for_a_first_request(request_bytes, segment_bytes, allocated_bytes):
    stats = simulate([alloc(0, request_bytes)])
    assert stats.peak_reserved_bytes == segment_bytes
    assert stats.peak_allocated_bytes == allocated_bytes


def test_a_full_small_segment_opens_a_second_one():
    # 1 MiB splits the 2 MiB segment 1 | 1; the second 1 MiB takes the free half exactly;
    # 100 B more fits nowhere: a second 2 MiB segment.
    events = [alloc(0, MiB), alloc(1, MiB)]
    assert simulate(events).peak_reserved_bytes == 2 * MiB
    stats = simulate([*events, alloc(2, 100)])
    assert stats.peak_reserved_bytes == 4 * MiB
    assert stats.peak_allocated_bytes == 2 * MiB + 512
    assert stats.num_segments == 2


def test_a_20_mib_segment_serves_the_next_large_request():
    # 5 MiB -> 20 MiB segment split 5 | 15; 12 MiB takes the 15 MiB block, split 12 | 3.
    stats = simulate([alloc(0, 5 * MiB), alloc(1, 12 * MiB)])
    assert stats.peak_reserved_bytes == 20 * MiB
    assert stats.peak_allocated_bytes == 17 * MiB
    assert stats.num_segments == 1 and stats.num_device_allocs == 1
    assert offsets_mib(stats.segments[0]) == [0, 5, 17]


def test_best_fit_takes_the_smallest_cached_block_that_fits():
    # Cached: a 12 MiB and a 16 MiB segment, both free. 11 MiB takes the 12 MiB one (rest
    # 1 MiB is not > 1 MiB: whole block); 14 MiB then takes the 16 MiB one (split 14 | 2).
    events = [alloc(0, 12 * MiB), alloc(1, 16 * MiB), free(0), free(1)]
    stats = simulate([*events, alloc(2, 11 * MiB), alloc(3, 14 * MiB)])
    assert stats.peak_reserved_bytes == 28 * MiB
    assert stats.allocated_bytes == 12 * MiB + 14 * MiB
    assert stats.num_device_allocs == 2
    twelve, sixteen = stats.segments
    assert [b.alloc_id for b in twelve.blocks] == [2]
    assert [b.alloc_id for b in sixteen.blocks] == [3, None]


def test_equal_cached_blocks_go_to_the_lower_address():
    # Two free 12 MiB segments (the first one created has the lower address); freed in the
    # opposite order, the next 12 MiB request still takes the lower one.
    stats = simulate([alloc(0, 12 * MiB), alloc(1, 12 * MiB), free(1), free(0), alloc(2, 12 * MiB)])
    first, second = stats.segments
    assert first.address < second.address
    assert [b.alloc_id for b in first.blocks] == [2]
    assert [b.alloc_id for b in second.blocks] == [None]


def test_large_pool_splits_only_a_rest_above_1_mib():
    cached_12 = [alloc(0, 12 * MiB), free(0)]
    # 11 MiB: rest exactly 1 MiB stays in the block, which is handed out whole.
    whole = simulate([*cached_12, alloc(1, 11 * MiB)])
    assert whole.allocated_bytes == 12 * MiB
    assert len(whole.segments[0].blocks) == 1
    # 11 MiB - 512: rest 1 MiB + 512 is split off, and a 1 MiB + 512 request then fits it.
    split = simulate([*cached_12, alloc(1, 11 * MiB - 512), alloc(2, MiB + 512)])
    assert split.allocated_bytes == 12 * MiB
    assert split.peak_reserved_bytes == 12 * MiB
    assert split.num_device_allocs == 1


def test_small_pool_splits_a_rest_of_512_bytes():
    # 1 MiB splits the segment 1 | 1; 1 MiB - 512 takes the free 1 MiB and splits off a
    # 512 B rest; 100 B fits that rest, so no second segment.
    stats = simulate([alloc(0, MiB), alloc(1, MiB - 512), alloc(2, 100)])
    assert stats.peak_reserved_bytes == 2 * MiB
    assert stats.allocated_bytes == 2 * MiB
    assert [b.size for b in stats.segments[0].blocks] == [MiB, MiB - 512, 512]


def test_small_and_large_pools_do_not_share_blocks():
    # A cached 20 MiB large block does not serve 100 B: +2 MiB small segment.
    assert simulate([alloc(0, 5 * MiB), free(0), alloc(1, 100)]).peak_reserved_bytes == 22 * MiB
    # A cached small block (2 MiB - 512 free) does not serve 1 MiB + 512: +20 MiB.
    assert simulate([alloc(0, 100), free(0), alloc(1, MiB + 512)]).peak_reserved_bytes == 22 * MiB


def test_streams_do_not_share_blocks():
    # The block freed on stream 0 is not reused on stream 1 (+2 MiB), but is on stream 0.
    events = [alloc(0, 100, stream=0), free(0), alloc(1, 100, stream=1)]
    assert simulate(events).peak_reserved_bytes == 4 * MiB
    assert simulate([*events, alloc(2, 100, stream=0)]).num_device_allocs == 2


def test_adjacent_free_blocks_merge():
    # 20 MiB segment: A 5 | B 5 | C 5 | free 5. Free A, then C (merges with the free tail),
    # then B (merges with both): one free 20 MiB block, so 18 MiB needs no new segment.
    events = [alloc(0, 5 * MiB), alloc(1, 5 * MiB), alloc(2, 5 * MiB), free(0), free(2), free(1)]
    stats = simulate([*events, alloc(3, 18 * MiB)])
    assert stats.peak_reserved_bytes == 20 * MiB
    assert [(b.size, b.alloc_id) for b in stats.segments[0].blocks] == [
        (18 * MiB, 3),
        (2 * MiB, None),
    ]


def test_fragmentation_is_the_gap_at_the_fullest_moment_of_the_reserved_peak():
    # 5 MiB opens the 20 MiB segment (allocated 5); 10 MiB fits its rest (allocated 15,
    # reserved still at its 20 MiB peak). Fragmentation at the peak: 20 - 15 = 5 MiB.
    stats = simulate([alloc(0, 5 * MiB), alloc(1, 10 * MiB), free(1)])
    assert stats.allocated_at_reserved_peak_bytes == 15 * MiB
    assert stats.fragmentation_bytes == 5 * MiB


# --------------------------------------------------------------------- max_split_size


def test_max_split_size_keeps_oversize_blocks_for_oversize_requests():
    # A cached 50 MiB block; 30 MiB request. Default: reuse and split 30 | 20 (50 MiB held).
    # max_split 40 MiB: 30 MiB < 40 MiB <= 50 MiB, so a new 30 MiB segment (80 MiB held).
    events = [alloc(0, 50 * MiB), free(0), alloc(1, 30 * MiB)]
    assert simulate(events).peak_reserved_bytes == 50 * MiB
    assert simulate(events, max_split_size_mb=40).peak_reserved_bytes == 80 * MiB


def test_max_split_size_stops_splitting_and_limits_rounding_to_20_mib():
    # A cached 60 MiB block; 45 MiB request. Default: split 45 | 15, allocated 45 MiB.
    # max_split 40 MiB: 45 >= 40, and 60 < 45 + 20: reused whole, allocated 60 MiB.
    events = [alloc(0, 60 * MiB), free(0), alloc(1, 45 * MiB)]
    assert simulate(events).allocated_bytes == 45 * MiB
    assert simulate(events, max_split_size_mb=40).allocated_bytes == 60 * MiB
    # A cached 70 MiB block: 70 >= 45 + 20, so a new 46 MiB segment (45 rounded to 2 MiB).
    events = [alloc(0, 70 * MiB), free(0), alloc(1, 45 * MiB)]
    assert simulate(events, max_split_size_mb=40).peak_reserved_bytes == 116 * MiB


def test_max_split_size_below_20_mib_is_refused():
    with pytest.raises(ValueError, match="max_split_size_mb=10"):
        simulate([], max_split_size_mb=10)


# ------------------------------------------------------------------ empty_cache, peaks


def test_empty_cache_releases_only_segments_without_allocations():
    # Small segment (A 100 B, C 200 B) and a 20 MiB segment (B). Free A and B; empty_cache
    # releases the 20 MiB segment only (C keeps the small one): 2 MiB held, peak 22 MiB.
    events = [alloc(0, 100), alloc(1, 5 * MiB), alloc(2, 200), free(0), free(1), EMPTY_CACHE]
    stats = simulate(events)
    assert stats.reserved_bytes == 2 * MiB
    assert stats.peak_reserved_bytes == 22 * MiB
    # A new 5 MiB request needs a new segment again.
    assert simulate([*events, alloc(3, 5 * MiB)]).num_device_allocs == 3


def test_reset_peak_restarts_both_peaks_from_the_current_state():
    # After the reset: 20 MiB reserved, 0 allocated; then 100 B adds a 2 MiB segment.
    events = [alloc(0, 5 * MiB), free(0), Event("reset_peak"), alloc(1, 100)]
    stats = simulate(events)
    assert stats.peak_allocated_bytes == 512
    assert stats.peak_reserved_bytes == 22 * MiB


# ------------------------------------------------------------------ expandable segments


def test_expandable_segments_grow_one_range_by_pages():
    # 5 MiB maps one 20 MiB large page (split 5 | 15). 30 MiB: the free 15 MiB end block
    # plus one more 20 MiB page: 40 MiB mapped, 30 MiB at offset 5, 5 MiB free at 35.
    # Ordinary segments: 20 + 30 = 50 MiB.
    events = [alloc(0, 5 * MiB), alloc(1, 30 * MiB)]
    assert simulate(events).peak_reserved_bytes == 50 * MiB
    stats = simulate(events, expandable_segments=True)
    assert stats.peak_reserved_bytes == 40 * MiB
    (segment,) = stats.segments
    assert segment.expandable
    assert offsets_mib(segment) == [0, 5, 35]
    # The small pool maps 2 MiB pages.
    assert simulate([alloc(0, 100)], expandable_segments=True).peak_reserved_bytes == 2 * MiB


def test_expandable_segments_reuse_what_ordinary_segments_cannot():
    # 12 MiB maps a 20 MiB page (12 | 8); freed, the page is one free 20 MiB block and
    # 14 MiB fits it. Ordinary: a 12 MiB segment, then a new 14 MiB one (26 MiB).
    events = [alloc(0, 12 * MiB), free(0), alloc(1, 14 * MiB)]
    assert simulate(events).peak_reserved_bytes == 26 * MiB
    assert simulate(events, expandable_segments=True).peak_reserved_bytes == 20 * MiB


def test_expandable_best_fit_prefers_a_hole_to_the_growable_end():
    # One 20 MiB page: A 5 | B 6 | C 5 | free 4 at the end. B freed leaves a 6 MiB hole.
    # 3 MiB: the 4 MiB end block is the smallest fit, but it can grow into unmapped pages,
    # so best fit counts it as larger and takes the hole at offset 5 instead.
    events = [alloc(0, 5 * MiB), alloc(1, 6 * MiB), alloc(2, 5 * MiB), free(1), alloc(3, 3 * MiB)]
    (segment,) = simulate(events, expandable_segments=True).segments
    assert offsets_mib(segment) == [0, 5, 8, 11, 16]
    assert [b.alloc_id for b in segment.blocks] == [0, 3, None, 2, None]


def test_expandable_empty_cache_unmaps_whole_free_pages():
    # A 5 MiB | B 30 MiB over two 20 MiB pages; B freed: free [5, 40) MiB. empty_cache
    # unmaps the page [20, 40) only (A holds the first): 20 MiB left. Then A freed and
    # empty_cache: nothing mapped, no segment.
    events = [alloc(0, 5 * MiB), alloc(1, 30 * MiB), free(1), EMPTY_CACHE]
    assert simulate(events, expandable_segments=True).reserved_bytes == 20 * MiB
    stats = simulate([*events, free(0), EMPTY_CACHE], expandable_segments=True)
    assert stats.reserved_bytes == 0
    assert stats.num_segments == 0


@pytest.mark.parametrize(
    "options", [{}, {"max_split_size_mb": 40}, {"expandable_segments": True}], ids=str
)
def test_random_traces_keep_segments_tiled_and_give_everything_back(options):
    rng = random.Random(0)
    events, live = [], []
    for alloc_id in range(600):
        if live and rng.random() < 0.45:
            events.append(free(live.pop(rng.randrange(len(live)))))
        elif rng.random() < 0.02:
            events.append(EMPTY_CACHE)
        else:
            size = rng.choice(
                [rng.randint(1, 4096), rng.randint(1, 2 * MiB), rng.randint(1, 99 * MiB)]
            )
            events.append(alloc(alloc_id, size, stream=rng.choice([0, 0, 5])))
            live.append(alloc_id)
    stats = simulate(events, **options)
    # Segments hold exactly the reserved bytes, their blocks tile them without gaps, the
    # allocated blocks sum to the allocated bytes, and no two free blocks are neighbours.
    assert sum(s.size for s in stats.segments) == stats.reserved_bytes
    in_use = [b.size for s in stats.segments for b in s.blocks if b.alloc_id is not None]
    assert sum(in_use) == stats.allocated_bytes and len(in_use) == len(live)
    for segment in stats.segments:
        ends = [b.address + b.size for b in segment.blocks]
        assert [b.address for b in segment.blocks] == [segment.address, *ends[:-1]]
        assert ends[-1] == segment.address + segment.size
        free_flags = [b.alloc_id is None for b in segment.blocks]
        assert not any(a and b for a, b in zip(free_flags, free_flags[1:]))
    assert stats.peak_allocated_bytes <= stats.peak_reserved_bytes
    # Everything freed, empty_cache gives every byte back.
    final = simulate([*events, *map(free, live), EMPTY_CACHE], **options)
    assert (final.reserved_bytes, final.num_segments) == (0, 0)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "events, message",
    [
        ([Event("malloc", 0, 100)], "'malloc' is invalid"),
        ([alloc(0, 100), alloc(0, 100)], "already live"),
        ([free(3)], "not a live allocation"),
        ([alloc(0, 0)], "sizes must be > 0"),
    ],
)
def test_bad_events_raise_one_line_errors(events, message):
    with pytest.raises(ValueError, match=message):
        simulate(events)


# ------------------------------------------------------------------------- snapshots

ROUND_TRIP = [
    alloc(0, 5 * MiB),
    alloc(1, 100, stream=7),
    alloc(2, 16 * MiB),  # > the 15 MiB rest of the 20 MiB segment: a segment of its own
    free(0),
    EMPTY_CACHE,  # releases the then empty 20 MiB segment, so the trace records it
    alloc(3, 300),
    free(1),
    free(2),
]


def test_events_round_trip_through_a_snapshot():
    assert events_from_snapshot(events_to_snapshot(ROUND_TRIP)) == ROUND_TRIP


def test_written_snapshot_is_what_memory_viz_reads(tmp_path):
    snapshot = events_to_snapshot([alloc(0, 100), alloc(1, 5 * MiB), free(1)], device=1)
    assert snapshot["device_traces"][0] == []
    trace = snapshot["device_traces"][1]
    assert [e["action"] for e in trace] == [
        "segment_alloc",
        "alloc",
        "segment_alloc",
        "alloc",
        "free_requested",
        "free_completed",
    ]
    assert [e["size"] for e in trace] == [2 * MiB, 100, 20 * MiB, 5 * MiB, 5 * MiB, 5 * MiB]
    small, large = snapshot["segments"]
    assert (small["device"], small["segment_type"], small["total_size"]) == (1, "small", 2 * MiB)
    assert [(b["size"], b["requested_size"], b["state"]) for b in small["blocks"]] == [
        (512, 100, "active_allocated"),
        (2 * MiB - 512, 0, "inactive"),
    ]
    assert small["blocks"][1]["address"] == small["address"] + 512
    assert [b["state"] for b in large["blocks"]] == ["inactive"]
    path = tmp_path / "snapshot.pickle"
    path.write_bytes(pickle.dumps(snapshot))
    assert load_snapshot(path) == snapshot


def recorded_snapshot() -> dict:
    """A snapshot in torch's format: a 12 MiB block allocated before recording began, then
    5 MiB (new 20 MiB segment), 100 B (new 2 MiB segment), the 5 MiB freed, empty_cache."""
    big, seg20, small = 0x7F10_0000_0000, 0x7F20_0000_0000, 0x7F30_0000_0000

    def entry(action, addr, size):
        return {"action": action, "addr": addr, "size": size, "stream": 0, "time_us": 0}

    return {
        "segments": [
            {
                "device": 0,
                "address": big,
                "total_size": 12 * MiB,
                "stream": 0,
                "segment_type": "large",
                "blocks": [
                    {
                        "address": big,
                        "size": 12 * MiB,
                        "requested_size": 12 * MiB,
                        "state": "active_allocated",
                    }
                ],
            },
            {
                "device": 0,
                "address": small,
                "total_size": 2 * MiB,
                "stream": 0,
                "segment_type": "small",
                "blocks": [
                    {
                        "address": small,
                        "size": 512,
                        "requested_size": 100,
                        "state": "active_allocated",
                    },
                    {"address": small + 512, "size": 2 * MiB - 512, "state": "inactive"},
                ],
            },
        ],
        "device_traces": [
            [
                entry("segment_alloc", seg20, 20 * MiB),
                entry("alloc", seg20, 5 * MiB),
                entry("segment_alloc", small, 2 * MiB),
                entry("alloc", small, 100),
                entry("free_requested", seg20, 5 * MiB),
                {"action": "oom", "device_free": 0, "size": 64 * MiB, "stream": 0},
                entry("free_completed", seg20, 5 * MiB),
                entry("segment_free", seg20, 20 * MiB),
                entry("snapshot", 0, 0),
            ]
        ],
        "allocator_settings": {"max_split_size": -1, "expandable_segments": False},
    }


def test_real_reserved_is_read_from_a_recorded_snapshot():
    # Held at the end: 12 + 2 = 14 MiB. The trace adds 20 + 2 - 20 = 2 MiB, so 12 MiB were
    # held when recording began; the peak is 12 + 20 + 2 = 34 MiB.
    real = real_reserved_from_snapshot(recorded_snapshot())
    assert (real.start_bytes, real.peak_bytes, real.end_bytes) == (12 * MiB, 34 * MiB, 14 * MiB)


def test_recorded_snapshot_replays_to_its_real_reserved_peak():
    # The 12 MiB block allocated before recording comes first; segment_free -> empty_cache.
    assert events_from_snapshot(recorded_snapshot()) == [
        alloc(0, 12 * MiB),
        alloc(1, 5 * MiB),
        alloc(2, 100),
        free(1),
        EMPTY_CACHE,
    ]
    simulated, real = replay_snapshot(recorded_snapshot())
    assert simulated.peak_reserved_bytes == real.peak_bytes == 34 * MiB
    assert simulated.reserved_bytes == real.end_bytes == 14 * MiB


def test_snapshot_reader_refuses_bad_input(tmp_path):
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps({"device_traces": [], "hook": print}))
    with pytest.raises(ValueError, match="builtins.print"):
        load_snapshot(path)
    with pytest.raises(ValueError, match="device 2 is invalid"):
        events_from_snapshot(recorded_snapshot(), device=2)


# ------------------------------------------------------------------------ capture


def linear_train_step(linear: nn.Linear, x: torch.Tensor) -> None:
    loss = linear(x).sum()
    loss.backward()


def traced_linear_step() -> list[Event]:
    with FakeTensorMode():
        linear = nn.Linear(256, 128)  # weight (128, 256), bias (128,)
        x = torch.randn(4, 256)
        return trace_step(linear_train_step, linear, x, live=[linear.weight, linear.bias, x])


def test_captured_linear_step_has_the_bytes_of_its_tensors():
    events = traced_linear_step()
    assert events == traced_linear_step()  # deterministic
    # Live first, in the order given: weight 128*256*4, bias 128*4, x 4*256*4.
    assert [e.size for e in events[:3]] == [131072, 512, 4096]
    # The step allocates y (4*128*4 = 2048) and the loss (4 B -> 512); y dies after the sum
    # (backward needs only x), then the ones_like seed (4 B -> 512), dW (131072) and db
    # (512), all alive at db's allocation: 131072 + 512 + 4096 + 512 + 512 + 131072 + 512
    # = 268288. The loss and seed die; weight, bias, x and the two gradients stay: 267264.
    assert [e.action for e in events[3:6]] == ["alloc", "alloc", "free"]
    assert [e.size for e in events if e.action == "alloc"][3:] == [2048, 4, 4, 131072, 512]
    stats = simulate(events)
    assert stats.peak_allocated_bytes == 268288
    assert stats.allocated_bytes == 267264
    # Every block is <= 1 MiB: one 2 MiB small-pool segment holds them all.
    assert stats.peak_reserved_bytes == 2 * MiB >= stats.peak_allocated_bytes
