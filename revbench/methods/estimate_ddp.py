"""The estimator's model of DistributedDataParallel's memory (the `ddp-N` scenarios), on a
single process; real DDP runs are `revbench.ddp`'s.

What DDP adds to a rank's memory, and what the estimator models (`DdpBuckets`):
- gradient buckets: the Reducer keeps one flat buffer per bucket, holding a copy of the
  bucket's gradients for the all-reduce, alive from construction on. The first iteration uses
  one bucket holding every parameter; at the start of the second, buckets are rebuilt in the
  order gradients became ready, capped at `bucket_cap_mb` (default 25 MiB), the first at
  1 MiB when the cap is the default (`dist._DEFAULT_FIRST_BUCKET_BYTES`). Steady-state steps
  (the ones measured) use the rebuilt buckets.
- `gradient_as_bucket_view=True`: each `.grad` becomes a view into its bucket, so gradients
  cost no memory of their own, but the buckets live through the forward pass too (where
  plain training holds no gradients).
- Not modelled: the communication library's own buffers (NCCL's channels and gloo's scratch
  live outside PyTorch's allocator), the transient of the bucket rebuild at the second
  iteration, find_unused_parameters and static_graph bookkeeping. World size changes none of
  the modelled bytes: the same per-rank batch on 2 or 8 ranks estimates the same.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from ..axes import DdpConfig


def bucket_limits(config: DdpConfig) -> list[int]:
    """Byte caps of the rebuilt buckets, as DDP computes them: [first, rest]."""
    mib = 1024 * 1024
    cap = int((25 if config.bucket_cap_mb is None else config.bucket_cap_mb) * mib)
    first = dist._DEFAULT_FIRST_BUCKET_BYTES if config.bucket_cap_mb is None else cap
    return [first, cap] if first < cap else [cap]


def bucket_assignment(params: list[nn.Parameter], config: DdpConfig) -> list[list[int]]:
    """Buckets as DDP rebuilds them after the first iteration: indices into `params`, which
    are in the order their gradients became ready."""
    buckets, _ = dist._compute_bucket_assignment_by_size(
        params, bucket_limits(config), [False] * len(params), list(range(len(params)))
    )
    return buckets


class DdpBuckets:
    """DDP's gradient buckets, emulated on a single process for the estimator.

    Created before the warm-up step: it records the order in which gradients become ready,
    as the Reducer does in the first iteration. `alive()` then allocates the rebuilt buckets
    (inside the tracker, so their bytes are counted) and, for the tracked step, does what the
    Reducer does with each ready gradient: copy it into its bucket and, with
    gradient_as_bucket_view, make `.grad` a view of the bucket (freeing the gradient).
    """

    def __init__(self, model: nn.Module, config: DdpConfig):
        self.config = config
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.ready: list[int] = []
        self._index = {id(p): i for i, p in enumerate(self.params)}
        self._views: dict[int, torch.Tensor] | None = None
        self._handles = [p.register_post_accumulate_grad_hook(self._on_ready) for p in self.params]
        self.bucket_bytes: list[int] = []  # one flat buffer per bucket

    def _on_ready(self, param: nn.Parameter) -> None:
        i = self._index[id(param)]
        if self._views is None:  # the warm-up: record the order, as the first iteration does
            if i not in self.ready:
                self.ready.append(i)
            return
        view = self._views[i]
        if param.grad is view:
            return
        view.copy_(param.grad)
        if self.config.gradient_as_bucket_view:
            param.grad = view

    @contextlib.contextmanager
    def alive(self) -> Iterator[None]:
        """The rebuilt buckets exist for the block (enter it inside the memory tracker)."""
        # Parameters that got no gradient are left out of DDP (`unused_parameters`), so out
        # of its buckets.
        order = list(self.ready)
        ordered = [self.params[i] for i in order]
        buffers = []
        views: dict[int, torch.Tensor] = {}
        self.bucket_bytes = []
        for bucket in bucket_assignment(ordered, self.config):
            members = [ordered[j] for j in bucket]
            flat = torch.empty(
                sum(p.numel() for p in members), dtype=members[0].dtype, device=members[0].device
            )
            buffers.append(flat)
            self.bucket_bytes.append(flat.numel() * flat.element_size())
            offset = 0
            for j, p in zip(bucket, members):
                views[order[j]] = flat[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
        self._views = views
        try:
            yield
        finally:
            self._views = None
            for handle in self._handles:
                handle.remove()
            for p in self.params:  # bucket views must not outlive the buckets' accounting
                p.grad = None
            del buffers, views
