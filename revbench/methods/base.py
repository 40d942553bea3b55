"""The method contract: a registered object that measures one cell into a `Measurement`."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from pathlib import Path

from revbench.models.registry import Registry, import_ref, is_ref

from ..cell import Cell
from ..measurement import Measurement


class Method(ABC):
    """One way to measure a cell; `--device NAME` picks it by its name."""

    name: str
    # Every method runs its cells in worker processes unless --no-isolate (revbench.launcher);
    # True: a new worker for every cell instead of a warm one serving cell after cell.
    fresh_worker_per_cell = False
    records_snapshots = False  # whether --memory-snapshot applies
    # True where the memory measured is the host's own (cpu): a worker the kernel's OOM killer
    # took ran out of the device's memory then, an `oom`; elsewhere the host ran out, an error.
    host_memory_is_device = False
    # True where a `ddp-N` cell is N real ranks, each measured by this method (cpu, cuda);
    # the estimator models data-parallel memory in one process instead.
    runs_ddp_ranks = False
    # True where a worker answers a model's other batch sizes from the work done for its
    # first (the estimator's traces): a pool keeps a model's cells on one slot
    batches_share_work = False

    @abstractmethod
    def measure(self, cell: Cell, snapshot_path: Path | None = None) -> Measurement:
        """Measure `cell`; raise on failure (the launcher turns it into a status)."""

    def unavailable(self) -> str | None:
        """Why the method cannot run on this machine, or None when it can."""
        return None

    def cleanup(self) -> None:
        """Called after every cell, measured or failed, once its objects are released."""
        return None


# A method, or where to import its class from ("package.module:Class"): a method's
# module loads torch, and a run reads only its name until a cell is launched with it.
METHODS: Registry[Method | str] = Registry("method")
_resolving = threading.Lock()


def register_method(method: Method | str, name: str | None = None) -> Method | str:
    """Register `method`, or its class as "package.module:Class" under `name`, made (and
    imported) by the first `get_method(name)`."""
    if isinstance(method, str):
        if name is None or not is_ref(method):
            raise TypeError(f"method {method!r}: give 'package.module:Class' and its name")
        return METHODS.register(name, method)
    return METHODS.register(method.name, method)


def get_method(name: str) -> Method:
    """The method registered under `name` (a one-line ValueError naming the valid ones)."""
    entry = METHODS.get(name)
    if isinstance(entry, str):
        with _resolving:  # slots' threads may ask at once: one instance per method
            entry = METHODS.get(name)
            if isinstance(entry, str):
                entry = METHODS[name] = import_ref(entry)()
    return entry


method_names = METHODS.names
