"""Results: append-only JSON Lines of typed records, a run manifest, and loading for analysis.

A run directory holds `manifest.json` (environment and invocations) and `results.jsonl`
(one `Record` per measured cell, flushed and fsynced as soon as it is measured, so killing
a run loses no finished cell). Files are parsed as JSON, never evaluated, and every record
is validated as it is read: a JSON object of this schema version whose figures are finite
non-negative numbers. A last line without its newline is what an interrupted write leaves;
readers leave it out, and a writer truncates it away (`RunStore.repair`) before appending.
One invocation runs a run directory at a time (`RunStore.lock`); the many processes it may
fan cells out to (`--jobs`, `--gpus`, submitit jobs on other hosts) append through
`RunStore.append`, which holds an flock on the results file for each record, so records
from many writers never interleave, tear or get lost.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from .cell import KEY_FIELDS, Cell, cell_label
from .errors import UsageError
from .measurement import Counts, MaxBatch, Measurement
from .status import FINAL, OK, STATUSES
from .tasks import task_geometry

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
RESULTS_FILE = "results.jsonl"
MANIFEST_FILE = "manifest.json"


@dataclass
class Record:
    """One measured cell. Units are in the field names; None means not measured.

    The counts and measurement columns are the fields of `Counts` and `Measurement`.
    """

    # identity
    model: str
    variant: str
    mode: str
    resolution: int
    batch_size: int
    precision: str
    scenario: str
    method: str
    optimizer: str
    suite: str
    group: str
    family: str
    kind: str
    size: str
    task: str
    overrides: dict = field(default_factory=dict)
    budget_bytes: int | None = None  # memory the cell may use (run --budget, max-batch)
    margin: float | None = None  # fraction of the budget held back (max-batch)
    # the task's inputs (revbench.tasks.task_geometry): detection images are 1333x800 at 800
    image_height: int | None = None
    image_width: int | None = None
    boxes_per_image: int | None = None
    # outcome
    status: str = OK
    message: str = ""
    # counts (deterministic)
    params: int | None = None
    macs: int | None = None
    macs_thop: int | None = None
    # memory: peak over the step, by kind (allocated, reserved, process): see Measurement
    peak_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    fragmentation_bytes: int | None = None
    process_peak_bytes: int | None = None
    cuda_context_bytes: int | None = None
    forward_peak_bytes: int | None = None
    backward_peak_bytes: int | None = None
    optimizer_peak_bytes: int | None = None
    num_alloc_retries: int | None = None
    num_ooms: int | None = None
    mem_parameters_bytes: int | None = None
    mem_buffers_bytes: int | None = None
    mem_gradients_bytes: int | None = None
    mem_activations_bytes: int | None = None
    mem_temporaries_bytes: int | None = None
    mem_optimizer_state_bytes: int | None = None
    mem_other_bytes: int | None = None
    # time (cuda: CUDA events; cpu: perf_counter)
    step_time_ms_median: float | None = None
    step_time_ms_iqr: float | None = None
    step_time_ms_min: float | None = None
    throughput_samples_per_s: float | None = None
    # the cell's protocol: warm-up and measured steps (the estimator's figures do not depend
    # on them: it always tracks one step after one warm-up step)
    warmup_steps: int | None = None
    measure_steps: int | None = None
    snapshot_file: str | None = None
    # a max-batch search (batch_size 0): the fields of `MaxBatch`
    max_batch: int | None = None
    max_batch_peak_bytes: int | None = None
    max_batch_reserved_bytes: int | None = None
    max_batch_alloc_retries: int | None = None
    next_batch_peak_bytes: int | None = None
    first_failed_batch: int | None = None
    first_failed_status: str | None = None
    estimated_max_batch: int | None = None
    estimated_peak_bytes: int | None = None
    probes: int | None = None
    schema_version: int = SCHEMA_VERSION
    measured_at: str = ""

    @classmethod
    def for_cell(
        cls,
        cell: Cell,
        *,
        status: str = OK,
        message: str = "",
        counts: Counts | None = None,
        measurement: Measurement | None = None,
        max_batch: MaxBatch | None = None,
    ) -> Record:
        measured = asdict(measurement or Measurement())
        note = measured.pop("note")  # a method's note goes into the message
        message = "; ".join(filter(None, [note, message]))
        measured["measure_steps"] = measured["measure_steps"] or cell.measure_steps
        return cls(
            model=cell.model,
            variant=cell.variant,
            mode=cell.mode,
            resolution=cell.resolution,
            batch_size=cell.batch_size,
            precision=cell.precision,
            scenario=cell.scenario,
            method=cell.method,
            optimizer=cell.optimizer,
            suite=cell.suite,
            group=cell.group,
            family=cell.family,
            kind=cell.kind,
            size=cell.size,
            task=cell.task,
            overrides=dict(cell.overrides),
            budget_bytes=cell.budget_bytes,
            margin=cell.margin,
            **task_geometry(cell.task, cell.resolution),
            status=status,
            message=message,
            measured_at=_now(),
            warmup_steps=cell.warmup_steps,
            **asdict(counts or Counts()),
            **measured,
            **asdict(max_batch or MaxBatch()),
        )

    @property
    def key(self) -> tuple:
        return tuple(getattr(self, f) for f in KEY_FIELDS)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


RECORD_FIELDS = tuple(f.name for f in fields(Record))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------- writing


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

    def write_manifest(self, invocation: dict) -> None:
        manifest = self.read_manifest() or {"schema_version": SCHEMA_VERSION, "invocations": []}
        if "environment" not in manifest:
            manifest["environment"] = environment()
        manifest["suite"] = invocation.get("suite", manifest.get("suite"))
        # Who writes: a second writer's lock error names this process.
        manifest["invocations"].append(
            {"pid": os.getpid(), "host": socket.gethostname(), **invocation}
        )
        tmp = self.manifest_path.with_suffix(".tmp")
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
        with self._append_lock():
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
            with open(self.results_path, "a") as f:
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


def environment() -> dict:
    """The environment every run records: GPU, driver, CUDA, library versions, commit, host."""
    import timm
    import torch

    import revbench

    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "revbench": revbench.__version__,
        "cuda": torch.version.cuda,
        "git_commit": _git_commit(),
        "cpu_count": os.cpu_count(),
        "gpu": None,
        "gpu_memory_bytes": None,
        "driver": None,
    }
    from .methods.cuda import cuda_settings

    env.update(cuda_settings())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = props.name
        env["gpu_memory_bytes"] = props.total_memory
        env["driver"] = _nvidia_driver()
    return env


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip().splitlines()[0] or None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


# ---------------------------------------------------------------------------- reading

# Record fields by type, for validation. Figures (counts, memory, time, steps) are finite
# non-negative numbers or null: a NaN, an infinity, a negative or a string in a results file
# would otherwise pass through comparisons (NaN compares false) and fake a verdict.
_BUDGET_FIELDS = ("budget_bytes", "margin")  # key fields that are numbers or null
_TEXT_FIELDS = (
    *(f for f in KEY_FIELDS if f not in ("resolution", "batch_size", *_BUDGET_FIELDS)),
    "status",
)
_SIDE_FIELDS = ("resolution", "batch_size")
_FIGURE_FIELDS = (
    *(f.name for f in fields(Counts)),
    *(f.name for f in fields(Measurement) if f.name not in ("snapshot_file", "note")),
    "warmup_steps",
    *_BUDGET_FIELDS,
    *(f.name for f in fields(MaxBatch) if f.name != "first_failed_status"),
)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_record(row: object, where: str) -> dict:
    """`row` if it is a valid record of this schema version, else a one-line UsageError
    naming `where` (file:line), the cell and the field."""
    if not isinstance(row, dict):
        raise UsageError(f"{where}: a JSON {type(row).__name__}, not a record (a JSON object)")
    version = row.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UsageError(
            f"{where}: schema version {version!r}; this revbench reads version {SCHEMA_VERSION}"
        )
    for name in _TEXT_FIELDS:
        if not isinstance(row.get(name), str):
            raise UsageError(f"{where}: record without {name!r} (a string): {row.get(name)!r}")
    for name in _SIDE_FIELDS:
        v = row.get(name)
        # batch_size 0 is a max-batch search: the batch is its answer (`max_batch`)
        search = name == "batch_size" and v == 0 and row.get("budget_bytes") is not None
        if not isinstance(v, int) or isinstance(v, bool) or (v < 1 and not search):
            raise UsageError(f"{where}: record without {name!r} (a positive integer): {v!r}")
    label = cell_label(row)
    if row["status"] not in STATUSES:
        raise UsageError(
            f"{where}: {label}: status {row['status']!r} is invalid; valid: {', '.join(STATUSES)}"
        )
    for name in _FIGURE_FIELDS:
        v = row.get(name)
        if v is not None and not (_is_number(v) and math.isfinite(v) and v >= 0):
            raise UsageError(
                f"{where}: {label}: {name} is {v!r}; a figure is a finite non-negative number "
                "or null"
            )
    return row


def parse_record(line: bytes, path: Path, n: int) -> dict:
    """One line of a results file as a validated record (UsageError naming path:n)."""
    where = f"{path}:{n}"
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"unreadable results file {where}: not UTF-8 text") from None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"unreadable results file {where}: {e.msg}") from None
    return check_record(row, f"results file {where}")


def read_records(path: str | Path) -> list[dict]:
    """Every record of a results file, validated, oldest first.

    A last line without its newline that is not JSON is a torn write (a killed run, a full
    disk): it holds no result and is left out. Any other bad line is a UsageError.
    """
    path = Path(path)
    lines = path.read_bytes().split(b"\n")
    last = lines.pop()  # what follows the last newline: b"" when the file ends cleanly
    rows = [parse_record(line, path, n) for n, line in enumerate(lines, 1) if line.strip()]
    if last.strip():
        try:
            json.loads(last)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return rows  # torn
        rows.append(parse_record(last, path, len(lines) + 1))
    return rows


def result_files(paths: list[str | Path]) -> list[Path]:
    """results.jsonl files under the given files or directories (searched recursively)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found.extend(sorted(p.rglob("*.jsonl")))
        else:
            raise UsageError(f"no results at {p}: no such file or directory")
    if not found:
        raise UsageError(f"no results found in {', '.join(map(str, paths))}")
    return found


def load(*paths: str | Path, latest_only: bool = True) -> pd.DataFrame:
    """Records from results files or run directories as a DataFrame.

    With `latest_only`, a cell measured several times (a resumed error, say) keeps its
    last record.
    """
    rows = []
    for path in result_files(list(paths)):
        for row in read_records(path):
            row["source_file"] = str(path)
            rows.append(row)
    df = pd.DataFrame(rows, columns=[*RECORD_FIELDS, "source_file"])
    for name in _BUDGET_FIELDS:  # None, not NaN, where no budget: keys must equal Cell.key
        df[name] = df[name].astype(object).where(df[name].notna(), None)
    if latest_only and not df.empty:
        df = df.drop_duplicates(subset=list(KEY_FIELDS), keep="last").reset_index(drop=True)
    return df


def load_manifests(*paths: str | Path) -> list[dict]:
    manifests = []
    for path in result_files(list(paths)):
        manifest = RunStore(path.parent).read_manifest()
        if manifest is not None:
            manifests.append(manifest)
    return manifests


def export_csv(df: pd.DataFrame, path: str | Path) -> None:
    df.to_csv(path, index=False)


# ------------------------------------------------------------------------ derived


FIT_GROUP = [
    "model",
    "variant",
    "mode",
    "resolution",
    "precision",
    "scenario",
    "optimizer",
    "method",
]


def per_sample_fit(df: pd.DataFrame) -> pd.DataFrame:
    """Memory per sample and fixed memory per model configuration.

    Least-squares line of peak bytes over batch size, over the `ok` rows of each
    (model, variant, mode, resolution, precision, scenario, optimizer, method): the slope is the
    memory per sample, the intercept the fixed memory (weights, optimizer state, ...).
    A configuration needs two distinct batch sizes to be fitted.
    """
    ok = df[(df["status"] == OK) & df["peak_bytes"].notna()]
    rows = []
    for key, g in ok.groupby(FIT_GROUP, dropna=False, sort=False):
        batches = g["batch_size"].to_numpy(dtype=float)
        if len(set(batches)) < 2:
            continue
        slope, intercept = np.polyfit(batches, g["peak_bytes"].to_numpy(dtype=float), 1)
        first = g.iloc[0]
        rows.append(
            {
                **dict(zip(FIT_GROUP, key)),
                "family": first["family"],
                "kind": first["kind"],
                "size": first["size"],
                "params": first["params"],
                "macs": first["macs"],
                "macs_thop": first["macs_thop"],
                "bytes_per_sample": float(slope),
                "fixed_bytes": float(intercept),
                "n_points": len(g),
                "batch_sizes": ",".join(str(int(b)) for b in sorted(set(batches))),
            }
        )
    return pd.DataFrame(rows)
