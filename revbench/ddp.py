"""Data-parallel training (the `ddp-N` scenarios) run for real; the estimator's model of DDP's
memory is `revbench.methods.estimate_ddp`.

A `ddp-N` cell is the training step of its model under `DistributedDataParallel` on N ranks
(processes on this machine: gloo on the CPU, nccl on GPUs), each rank with the cell's batch
(the per-rank batch, as data-parallel recipes state it). The launch layer starts the ranks
(`run_ranks`, from `revbench.execute`) and each runs the cell's own method, whose step
(`revbench.scenario.cell_step`) is the DDP-wrapped train step on the rank's device. Every
rank's peak is measured; the record's peak is the maximum and its message lists every
rank's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable

import torch
from torch import nn

from .axes import DdpConfig

BACKENDS = {"cpu": "gloo", "cuda": "nccl"}


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
