"""Data-parallel training (the `ddp-N` scenarios): real DDP runs and the estimator's model of
DDP's memory.

A `ddp-N` cell is the training step of its model under `DistributedDataParallel` on N ranks
(processes on this machine: gloo on the CPU, nccl on GPUs), each rank with the cell's batch
(the per-rank batch, as data-parallel recipes state it). The launch layer starts the ranks
(`run_ranks`, from `revbench.execute`) and each runs the cell's own method, whose step
(`revbench.scenario.cell_step`) is the DDP-wrapped train step on the rank's device. Every
rank's peak is measured; the record's peak is the maximum and its message lists every
rank's.

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
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .axes import world_size_of

BACKENDS = {"cpu": "gloo", "cuda": "nccl"}


@dataclass(frozen=True)
class DdpConfig:
    """The DistributedDataParallel settings a cell runs (and the estimator models) with."""

    world_size: int
    bucket_cap_mb: float | None = None  # None: DDP's default (25 MiB, first bucket 1 MiB)
    gradient_as_bucket_view: bool = False

    def bucket_limits(self) -> list[int]:
        """Byte caps of the rebuilt buckets, as DDP computes them: [first, rest]."""
        import torch.distributed as dist

        mib = 1024 * 1024
        cap = int((25 if self.bucket_cap_mb is None else self.bucket_cap_mb) * mib)
        first = dist._DEFAULT_FIRST_BUCKET_BYTES if self.bucket_cap_mb is None else cap
        return [first, cap] if first < cap else [cap]


# ------------------------------------------------------------------ the estimator's model


def bucket_assignment(params: list[nn.Parameter], config: DdpConfig) -> list[list[int]]:
    """Buckets as DDP rebuilds them after the first iteration: indices into `params`, which
    are in the order their gradients became ready."""
    import torch.distributed as dist

    buckets, _ = dist._compute_bucket_assignment_by_size(
        params, config.bucket_limits(), [False] * len(params), list(range(len(params)))
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


# ------------------------------------------------------------------------- real DDP runs


def run_ranks(target: Callable, world_size: int, *args, timeout_s: float = 600.0) -> list:
    """Run `target(rank, world_size, rendezvous, *args)` on `world_size` fresh processes
    (spawned: safe from a process that already holds threads or CUDA) and return what each
    returned, by rank. A rank that fails raises here with its error.

    Nothing is left behind on any exit path: the ranks meet at a TCP store this process
    serves on the loopback (no rendezvous file) and send their results back through pipes
    (no result files), and each rank asks the kernel to kill it when this process dies
    (PR_SET_PDEATHSIG), so killing the worker that runs a DDP cell takes its ranks too.
    """
    import io
    from multiprocessing.connection import wait

    import torch.distributed as dist
    import torch.multiprocessing as mp

    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    rendezvous = f"127.0.0.1:{store.port}"
    ctx = mp.get_context("spawn")
    pipes = [ctx.Pipe(duplex=False) for _ in range(world_size)]
    procs = [
        ctx.Process(
            target=_rank_entry,
            args=(target, r, world_size, rendezvous, pipes[r][1], os.getpid(), args),
        )
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    for _, sender in pipes:
        sender.close()  # the ranks hold the sending ends: end of file when a rank dies
    received: dict[int, bytes] = {}
    deadline = time.monotonic() + timeout_s
    try:
        waiting = {pipes[r][0]: r for r in range(world_size)}
        while waiting and (left := deadline - time.monotonic()) > 0:
            for conn in wait(list(waiting), timeout=left):
                rank = waiting.pop(conn)
                try:
                    received[rank] = conn.recv_bytes()
                except EOFError:  # died without answering
                    pass
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        for receiver, _ in pipes:
            receiver.close()
    results = []
    for rank, p in enumerate(procs):
        if rank not in received:
            raise RuntimeError(f"DDP rank {rank} of {world_size} died (exit code {p.exitcode})")
        result = torch.load(io.BytesIO(received[rank]), weights_only=False)
        if isinstance(result, BaseException):
            raise RuntimeError(f"DDP rank {rank} of {world_size}: {result}") from result
        results.append(result)
    return results


def _rank_entry(target, rank, world_size, rendezvous, conn, parent, args) -> None:
    import io

    import torch.distributed as dist

    _die_with(parent)
    torch.set_num_threads(1)  # ranks share the machine's cores
    try:
        result = target(rank, world_size, rendezvous, *args)
    except Exception as exc:  # sent back, so the caller's error names it
        result = RuntimeError(f"{type(exc).__name__}: {exc}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    buffer = io.BytesIO()
    torch.save(result, buffer)
    conn.send_bytes(buffer.getvalue())
    conn.close()


def _die_with(parent: int) -> None:
    """Ask the kernel to kill this process when its parent dies (Linux); exit at once if
    it already has."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def init_rank(rank: int, world_size: int, rendezvous: str, device_type: str) -> torch.device:
    """Join the process group of `run_ranks` (its `rendezvous`, host:port) as `rank`, on
    this rank's device."""
    import torch.distributed as dist

    if device_type == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    host, port = rendezvous.rsplit(":", 1)
    store = dist.TCPStore(host, int(port), is_master=False)
    dist.init_process_group(BACKENDS[device_type], store=store, rank=rank, world_size=world_size)
    return device


def unused_parameters(model: nn.Module, step) -> list[str]:
    """Parameters no gradient reaches in one local forward and backward of `step` (RevCol's
    first column has alphas that multiply nothing). DDP must be told to ignore them: it
    would otherwise wait for their bucket, all-reduce none of its gradients in the first
    step (silently: ranks diverge) and stop with "Expected to have finished reduction in
    the prior iteration" at the second. find_unused_parameters would work too, at the cost
    of a graph traversal every step; these models leave the same parameters unused always."""
    step.forward()
    step.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    return unused


def wrap(
    model: nn.Module, device: torch.device, config: DdpConfig, ignore: list[str] = ()
) -> nn.Module:
    """`model` under DistributedDataParallel, parameters named in `ignore` left out."""
    from torch.nn.parallel import DistributedDataParallel

    if ignore:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, list(ignore))
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        bucket_cap_mb=config.bucket_cap_mb,
        gradient_as_bucket_view=config.gradient_as_bucket_view,
    )


def reducer_bucket_bytes(ddp: nn.Module) -> list[int]:
    """The Reducer's bucket buffers, in bytes, as its comm hook interface exposes them."""
    return [
        b.buffer().numel() * b.buffer().element_size()
        for b in ddp.reducer._get_zeros_like_grad_buckets()
    ]


def round_up(nbytes: int, block: int) -> int:
    return math.ceil(nbytes / block) * block


def cell_ddp(cell) -> DdpConfig | None:
    """The DDP settings of a `ddp-N` cell (DDP's defaults), None for any other scenario."""
    world_size = world_size_of(cell.scenario)
    return None if world_size is None else DdpConfig(world_size)
