"""The run directory: `manifest.json` (environment and invocations) and `results.jsonl`.

Records (`revbench.records`) are appended one per measured cell, flushed and fsynced as soon
as the cell is measured, so killing a run loses no finished cell. A last line without its
newline is what an interrupted write leaves; a writer truncates it away (`RunStore.repair`)
before appending. One invocation runs a run directory at a time (`RunStore.lock`); the many
processes it may fan cells out to (`--jobs`, `--gpus`, submitit jobs on other hosts) append
through `RunStore.append`, which holds an flock on the results file for each record, so
records from many writers never interleave, tear or get lost.

Imports neither torch nor pandas: the environment is probed only when a manifest is written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from .cell import KEY_FIELDS
from .environment import environment
from .errors import UsageError, naming
from .records import SCHEMA_VERSION, Record, parse_record, read_records
from .status import FINAL

log = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
MANIFEST_FILE = "manifest.json"


class RunStore:
    """A run directory: manifest + append-only results.

    Writers hold `lock()` for as long as they write; `repair()` before the first append
    drops what an interrupted write left, and `append` never glues a record onto it.
    """

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.results_path = self.dir / RESULTS_FILE
        self.manifest_path = self.dir / MANIFEST_FILE

    @classmethod
    def create(cls, out_dir: Path, suite: str) -> RunStore:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        root = Path(out_dir) / suite
        root.mkdir(parents=True, exist_ok=True)
        n = 1
        while True:
            run_dir = root / (stamp if n == 1 else f"{stamp}-{n}")
            try:
                run_dir.mkdir()  # atomic: two runs started within one second get two directories
            except FileExistsError:
                n += 1
                continue
            return cls(run_dir)

    @classmethod
    def latest(cls, out_dir: Path, suite: str) -> RunStore | None:
        root = Path(out_dir) / suite
        runs = (
            sorted(p for p in root.glob("*") if (p / MANIFEST_FILE).is_file())
            if root.is_dir()
            else []
        )
        return cls(runs[-1]) if runs else None

    @contextlib.contextmanager
    def lock(self) -> Iterator[RunStore]:
        """Hold the run directory for writing; a second writer gets a UsageError naming the
        holder (the pid and host its manifest invocation recorded).

        An flock on the directory itself: nothing is written to take it, and the kernel
        releases it when the holder exits, however it exits, so a killed run leaves no stale
        lock behind.
        """
        import fcntl

        fd = os.open(self.dir, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise UsageError(
                    f"run directory {self.dir} is being written by {self._holder()}; "
                    "wait for it to finish, or start a new run (without --resume)"
                ) from None
            yield self
        finally:
            os.close(fd)  # releases the lock

    def _holder(self) -> str:
        try:
            last = json.loads(self.manifest_path.read_text())["invocations"][-1]
            started = last.get("started_at", "?")
            return f"pid {last['pid']} on host {last['host']} (started {started})"
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return "another process"

    def write_manifest(self, invocation: dict, models: dict | None = None) -> None:
        """Append `invocation`; `models` adds what analysis reads of each model measured
        (`revbench.suite.model_facts`) to what earlier invocations wrote."""
        manifest = self.read_manifest() or {"schema_version": SCHEMA_VERSION, "invocations": []}
        if "environment" not in manifest:
            manifest["environment"] = environment()
        if models:
            manifest["models"] = {**manifest.get("models", {}), **models}
        manifest["suite"] = invocation.get("suite", manifest.get("suite"))
        # Who writes: a second writer's lock error names this process.
        manifest["invocations"].append(
            {"pid": os.getpid(), "host": socket.gethostname(), **invocation}
        )
        tmp = self.manifest_path.with_suffix(".tmp")
        with naming(self.manifest_path):
            tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
            tmp.replace(self.manifest_path)

    def read_manifest(self) -> dict | None:
        """The manifest, or None when there is none; an unreadable one is a UsageError."""
        if not self.manifest_path.is_file():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UsageError(f"unreadable manifest {self.manifest_path}: {e}") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("invocations"), list):
            raise UsageError(
                f"unreadable manifest {self.manifest_path}: not a revbench manifest "
                "(a JSON object with an 'invocations' list)"
            )
        return manifest

    @contextlib.contextmanager
    def _append_lock(self) -> Iterator[None]:
        """Exclusive hold on the results file for one repair-and-append, among every process
        writing this run (the run's workers, its submitit jobs on other hosts: Linux NFS
        clients forward flock to the server as a POSIX lock). Blocks until it is free."""
        import fcntl

        fd = os.open(self.results_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def repair(self) -> str | None:
        """Complete or drop a torn last line; a one-line notice of what was done, or None.

        A last line without its newline is an interrupted write: kept (newline added) if it
        is a whole valid record, truncated away otherwise. Call it with the lock held.
        """
        if not self.results_path.is_file():
            return None
        with naming(self.results_path), self._append_lock():
            return self._repair()

    def _repair(self) -> str | None:
        with open(self.results_path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0 or f.seek(size - 1) >= 0 and f.read(1) == b"\n":
                return None  # the common case, one byte read: called before every append
            f.seek(0)
            data = f.read()
            cut = data.rfind(b"\n") + 1  # 0 when the only line is the torn one
            tail = data[cut:]
            try:
                parse_record(tail, self.results_path, data.count(b"\n") + 1)
            except UsageError:
                f.truncate(cut)
                notice = (
                    f"repaired {self.results_path}: dropped a partial last line "
                    f"({len(tail)} bytes) left by an interrupted write"
                )
            else:
                f.write(b"\n")
                notice = f"repaired {self.results_path}: completed its last record's line"
            f.flush()
            os.fsync(f.fileno())
        return notice

    def append(self, record: Record) -> None:
        """Add one record; safe from many processes at once (see `_append_lock`)."""
        with self._append_lock():
            notice = self._repair()  # never glue a record onto a partial line
            if notice:
                log.warning(notice)
            with naming(self.results_path), open(self.results_path, "a") as f:
                f.write(record.to_json() + "\n")
                f.flush()
                os.fsync(f.fileno())

    def update_invocation(self, **fields) -> None:
        """Add fields to this run's last invocation in the manifest (what was learnt while it
        ran: the workers' hosts and GPUs). Call it with the lock held."""
        manifest = self.read_manifest()
        if not manifest or not manifest["invocations"]:
            return
        manifest["invocations"][-1].update(fields)
        tmp = self.manifest_path.with_suffix(".tmp")
        with naming(self.manifest_path):
            tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
            tmp.replace(self.manifest_path)

    def measured_keys(self) -> set[tuple]:
        """Keys of the cells already measured (ok or oom) in this run."""
        return {
            tuple(row.get(f) for f in KEY_FIELDS) for row in self.rows() if row["status"] in FINAL
        }

    def rows(self) -> list[dict]:
        """Every record stored so far, validated, oldest first."""
        return read_records(self.results_path) if self.results_path.is_file() else []
