"""Worker processes: cells measured away from the run, under their timeouts.

A cell's measurement and its parameter and MAC counts run in a worker process, under the
cell's timeout: a cell that hangs is killed at its timeout, one that segfaults or exits
takes only its worker down, and either way the run gets a row and goes on. Whatever
happens, the pool returns an `Outcome`; it never raises for a failed cell. The batch
size is never changed behind the user's back. `revbench.launcher`'s pool launcher drives
one `WorkerPool` per slot.

Workers are started before they are needed and kept warm (`WorkerPool`): interpreter and
torch start-up are never counted against a cell's timeout. A worker serves cell after cell
(estimate, cpu) unless its method wants a clean process per cell (cuda: a fresh allocator,
so an OOM or fragmentation cannot leak into the next cell's peaks); then the next worker
starts while the current cell runs. A worker that crashed or timed out is replaced.

A worker answers a request with the measurement's outcome first and the counts second,
both within the cell's timeout: a model that crashes or hangs only when counted keeps its
measurement, with its counts empty and the reason in its message.

Workers die with the run: each lives in its own process group (a timeout kills the group,
so children it spawned go too; Ctrl-C reaches only the parent, which then kills it) and
asks the kernel to kill it when its parent dies (PR_SET_PDEATHSIG; elsewhere a watcher
thread polls the parent's pid), so no orphan is left holding a GPU.

    python -m revbench.worker PARENT_PID     # a worker: JSON requests on stdin, answers
                                             # on stdout (what models print goes to stderr)
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

from . import status
from .cell import Cell
from .errors import UsageError
from .measurement import Counts
from .methods import get_method
from .outcome import Outcome, Request

log = logging.getLogger(__name__)

# Start-up (interpreter, torch, timm, the registry and plugins) is waited for separately
# from the cell's timeout; a worker that is not ready by then is broken, not slow.
STARTUP_TIMEOUT_S = 300.0
STDERR_TAIL_LINES = 3  # of a dead worker's stderr, in its row's message
MESSAGE_CHARS = 500


# -------------------------------------------------------------------------------- workers


class WorkerDied(Exception):
    """The worker exited (or was killed) before answering."""

    oom = False  # killed by a SIGKILL revbench did not send: the kernel's OOM killer


class WorkerTimeout(Exception):
    """The worker did not answer within the deadline."""


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _stderr_summary(text: str) -> str:
    """What a dead worker's stderr says: faulthandler's fatal error and the innermost
    frames when it crashed, else its last lines."""
    # Kineto marks every profiler start and stop on stderr ("USDT:... profiler_start"): the
    # dense estimator profiles, and those markers would hide why the worker died.
    lines = [
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("USDT:")
    ]
    fatal = [i for i, line in enumerate(lines) if line.startswith("Fatal Python error")]
    if fatal:
        i = fatal[-1]
        frames = [line for line in lines[i + 1 :] if line.startswith("File ")]
        return " | ".join([lines[i], *frames[: STDERR_TAIL_LINES - 1]])
    return " | ".join(lines[-STDERR_TAIL_LINES:])


class Worker:
    """One worker process: `python -m revbench.worker`, fed requests one line each."""

    def __init__(self, extra_env: dict[str, str] | None = None) -> None:
        # Its stderr goes to an anonymous file: a crashed cell's row quotes its tail, and a
        # chatty model cannot fill a pipe nobody reads.
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "revbench.worker", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None if os.environ.get("REVBENCH_DEBUG") else self._stderr,
            start_new_session=True,
            env={**os.environ, **extra_env} if extra_env else None,
        )
        self._buffer = b""
        self.ready = False
        self.extra_env = dict(extra_env or {})
        self.env = worker_env(extra_env)

    def _read_line(self, deadline: float | None) -> bytes:
        """The next line on the worker's stdout; WorkerTimeout past `deadline`, WorkerDied
        at end of file."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                raise WorkerTimeout
            readable, _, _ = select.select([fd], [], [], wait)
            if readable:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise self._death()
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def wait_ready(self) -> None:
        if self.ready:
            return
        try:
            line = self._read_line(time.monotonic() + STARTUP_TIMEOUT_S)
        except (WorkerDied, WorkerTimeout) as e:
            self.kill()
            raise UsageError(
                f"the cell worker could not start ({e or 'no answer'}); "
                "--no-isolate runs cells in this process"
            ) from None
        if json.loads(line).get("ready") != self.proc.pid:
            self.kill()
            raise UsageError(f"the cell worker said {line[:200]!r} instead of ready")
        self.ready = True

    def run(self, request: Request, timeout_s: float) -> Outcome:
        """Send a request and wait for its outcome at most `timeout_s` seconds."""
        self.wait_ready()
        # Where this cell's stderr starts. Never seek the file: the worker shares its offset.
        self._stderr_from = os.fstat(self._stderr.fileno()).st_size
        try:
            self.proc.stdin.write((request.to_json() + "\n").encode())
            self.proc.stdin.flush()
        except OSError:  # a broken pipe: it died between cells
            raise self._death() from None
        deadline = time.monotonic() + timeout_s
        line = self._read_line(deadline)
        try:
            outcome = Outcome.from_json(line.decode())
        except (ValueError, KeyError, TypeError):
            raise WorkerDied(f"worker answered {line[:200]!r}, not an outcome") from None
        if not request.counts:
            return outcome
        # The counts come second, within the same deadline: a model that crashes or hangs
        # only when counted keeps its measurement, and is not counted again.
        try:
            counts = Counts(**json.loads(self._read_line(deadline)))
        except WorkerTimeout:
            self.kill()
            why = "counting exceeded the cell's timeout"
        except WorkerDied as died:
            why = f"counting failed: {died}"
        else:
            return replace(outcome, counts=counts)
        message = "; ".join(filter(None, [outcome.message, why]))[:MESSAGE_CHARS]
        return replace(outcome, message=message, counts=Counts())

    _stderr_from = 0

    def _death(self) -> WorkerDied:
        """How the worker died, with the tail of what it wrote to stderr for this cell."""
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # it closed its stdout but lives on
            self.kill()
            code = self.proc.returncode
        how = f"killed by {_signal_name(code)}" if code < 0 else f"exited with code {code}"
        fd = self._stderr.fileno()
        start = max(self._stderr_from, os.fstat(fd).st_size - (1 << 16))
        tail = _stderr_summary(os.pread(fd, 1 << 16, start).decode(errors="replace"))
        oom = code == -signal.SIGKILL and not self._killed
        if oom:  # nobody here sent it: on Linux that is the kernel's out-of-memory killer
            how += " (not by revbench: most likely the host's out-of-memory killer)"
        died = WorkerDied(f"worker {how}" + (f": {tail}" if tail else ""))
        died.oom = oom
        return died

    _killed = False

    def kill(self, wait: bool = True) -> None:
        """Kill the worker and everything it started (its process group); without `wait`,
        its exit is not waited for (the kernel's release of its memory: 30-60 ms)."""
        if self.proc.poll() is None:
            self._killed = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if wait:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout, self._stderr):
            with contextlib.suppress(OSError):
                stream.close()

    close = kill  # an idle worker has nothing to finish


def worker_env(extra_env: dict[str, str] | None = None) -> tuple:
    """What a worker inherits that decides what it can run: a change means a new worker."""
    names = ("REVBENCH_PLUGINS", "PYTHONPATH", "CUDA_VISIBLE_DEVICES", "REVBENCH_DEBUG")
    env = {**os.environ, **(extra_env or {})}
    return (sys.executable, os.getcwd(), *(env.get(n) for n in names))


def cpu_slots(jobs: int) -> list[dict[str, str]]:
    """The environments of `jobs` CPU workers: each gets its share of the cores as torch's
    thread count, so N workers computing at once (the cpu method, a detector's real CPU
    step) do not run N x cores threads. A thread count the user set is kept."""
    if "OMP_NUM_THREADS" in os.environ:
        return [{}] * jobs
    threads = max(1, (os.cpu_count() or 1) // jobs)
    return [{"OMP_NUM_THREADS": str(threads)}] * jobs


_PRESTARTED: list[Worker] = []
_PRESTARTED_GUARD = threading.Lock()  # the slots of a run take workers from their threads


def prestart(extra_env: dict[str, str] | None = None) -> None:
    """Start a worker now for a pool that will want one with `extra_env` (`WorkerPool`
    takes it): a run's first worker loads torch while the run's own process reads its
    suite and cache, on another core, instead of after. `discard_prestarted` kills one
    nobody took."""
    worker = Worker(extra_env)
    with _PRESTARTED_GUARD:
        _PRESTARTED.append(worker)


def _prestarted(extra_env: dict[str, str]) -> Worker | None:
    with _PRESTARTED_GUARD:
        for worker in _PRESTARTED:
            alive = worker.proc.poll() is None
            if alive and worker.extra_env == extra_env and worker.env == worker_env(extra_env):
                _PRESTARTED.remove(worker)
                return worker
    return None


def discard_prestarted() -> None:
    with _PRESTARTED_GUARD:
        workers = list(_PRESTARTED)
        _PRESTARTED.clear()
    for worker in workers:  # at the end of a command: subprocess reaps it later, or init does
        worker.kill(wait=False)


class WorkerPool:
    """Warm workers for one cell at a time.

    `run` hands the cell to a ready worker (starting one if none is warm; that wait is not
    the cell's) and waits at most the cell's timeout. A timed-out worker is killed with its
    process group; a crashed one is reaped; either is replaced by the next `run`.
    """

    def __init__(self, extra_env: dict[str, str] | None = None) -> None:
        # extra_env: what this pool's workers get on top of ours (--gpus pins each pool to
        # one card with CUDA_VISIBLE_DEVICES).
        self.extra_env = dict(extra_env or {})
        self._warm: list[Worker] = []
        self._busy: set[Worker] = set()  # running a cell; close() kills them too

    def _take(self) -> Worker:
        while self._warm:
            worker = self._warm.pop(0)
            if worker.proc.poll() is None and worker.env == worker_env(self.extra_env):
                return worker
            worker.kill()
        return _prestarted(self.extra_env) or Worker(self.extra_env)

    def run(
        self, cell: Cell, snapshot_path: Path | None = None, *, counts: bool, thop: bool = True
    ) -> Outcome:
        request = Request(cell, snapshot_path, counts, thop)
        method = get_method(cell.method)
        fresh = method.fresh_worker_per_cell
        worker = self._take()
        try:
            worker.wait_ready()
        except BaseException:
            worker.kill()
            raise
        if fresh and not self._warm:
            # the next cell's worker starts while this one runs
            self._warm.append(Worker(self.extra_env))
        self._busy.add(worker)
        try:
            outcome = worker.run(request, cell.timeout_s)
        except WorkerTimeout:
            worker.kill()
            return Outcome(status.TIMEOUT, f"cell exceeded its timeout of {cell.timeout_s:g} s")
        except WorkerDied as died:
            worker.kill()
            # The host's OOM killer is an out-of-memory result only where host memory is the
            # device measured; elsewhere an error, which --resume retries (alone, or on a
            # machine with more memory).
            oom = died.oom and method.host_memory_is_device
            return Outcome(status.OOM if oom else status.ERROR, str(died)[:MESSAGE_CHARS])
        except BaseException:  # Ctrl-C while waiting: the cell dies with the run
            worker.kill()
            raise
        finally:
            self._busy.discard(worker)
        if fresh:
            worker.close()
        else:
            self._warm.insert(0, worker)
        return outcome

    def close(self) -> None:
        """Kill every worker, idle or running a cell (whose run then returns an error)."""
        while self._warm:
            self._warm.pop().kill()
        for worker in list(self._busy):
            worker.kill()


_POOL: WorkerPool | None = None


def shared_pool() -> WorkerPool:
    """The process's worker pool, kept warm across runs (one interpreter start per process,
    not per run) and closed at exit."""
    global _POOL
    if _POOL is None:
        _POOL = WorkerPool()
        atexit.register(_POOL.close)
    return _POOL


def run_isolated(
    cell: Cell, snapshot_path: Path | None = None, *, counts: bool = False, thop: bool = True
) -> Outcome:
    """Measure (and count, with `counts`) the cell in a warm worker, under its timeout."""
    return shared_pool().run(cell, snapshot_path, counts=counts, thop=thop)


# --------------------------------------------------------------------- the worker process


def _die_with_parent(parent: int) -> None:
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            raise OSError(ctypes.get_errno(), "prctl failed")
    except (OSError, AttributeError):  # not Linux: watch the parent instead

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os.killpg(os.getpgrp(), signal.SIGKILL)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # the parent died before the kernel was told
        os._exit(1)


def serve(parent: int) -> None:
    """The worker loop: one JSON request per stdin line, one Outcome per stdout line."""
    import faulthandler

    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # what models print goes to stderr, never into the protocol
    _die_with_parent(parent)
    faulthandler.enable()  # a segfault leaves its Python stack in the row's message

    # start-up: imported after PR_SET_PDEATHSIG and before "ready": none of it counts
    # against a cell's timeout, and a parent that dies meanwhile takes the worker along.
    import torch  # noqa: F401

    from revbench.models import UnknownModelError, get_info  # the registry and REVBENCH_PLUGINS

    from . import counting, scenario  # noqa: F401
    from .execute import count, run_inline
    from .methods import cpu, cuda, estimate, estimate_method  # noqa: F401 (registered lazily)

    protocol.write(json.dumps({"ready": os.getpid()}) + "\n")
    protocol.flush()
    for line in sys.stdin:
        request = Request.from_json(line)
        cell = request.cell
        try:
            get_info(cell.model)
        except UnknownModelError:
            known = False
            outcome = Outcome(
                status.ERROR,
                f"model {cell.model!r} is not registered in the worker process: register it "
                "from a module named in REVBENCH_PLUGINS, or run with --no-isolate",
            )
        else:
            known = True
            outcome = run_inline(cell, request.snapshot_path)
        protocol.write(outcome.to_json() + "\n")
        protocol.flush()
        if request.counts:  # second: the measurement is safe should counting crash
            counts = count(cell, request.thop) if known else Counts()
            protocol.write(json.dumps(asdict(counts)) + "\n")
            protocol.flush()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
