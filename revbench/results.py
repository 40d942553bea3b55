"""Results: append-only JSON Lines of typed records, a run manifest, and loading for analysis.

A run directory holds `manifest.json` (environment and invocations) and `results.jsonl`
(one `Record` per measured cell, flushed and fsynced as soon as it is measured, so killing
a run loses no finished cell). Files are parsed as JSON, never evaluated.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from .cell import KEY_FIELDS, Cell
from .errors import UsageError
from .measurement import Counts, Measurement
from .status import FINAL, OK
from .tasks import task_geometry

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
    # memory: peak over the step. cuda: allocator peaks; estimate: MemTracker's peak.
    peak_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    forward_peak_bytes: int | None = None
    backward_peak_bytes: int | None = None
    optimizer_peak_bytes: int | None = None
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
    measure_steps: int | None = None
    snapshot_file: str | None = None
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
    ) -> Record:
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
            **task_geometry(cell.task, cell.resolution),
            status=status,
            message=message,
            measured_at=_now(),
            **asdict(counts or Counts()),
            **asdict(measurement or Measurement()),
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
    """A run directory: manifest + append-only results."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.results_path = self.dir / RESULTS_FILE
        self.manifest_path = self.dir / MANIFEST_FILE

    @classmethod
    def create(cls, out_dir: Path, suite: str) -> RunStore:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path(out_dir) / suite / stamp
        n = 1
        while run_dir.exists():  # two runs within one second
            n += 1
            run_dir = Path(out_dir) / suite / f"{stamp}-{n}"
        run_dir.mkdir(parents=True)
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

    def write_manifest(self, invocation: dict) -> None:
        manifest = self.read_manifest() or {"schema_version": SCHEMA_VERSION, "invocations": []}
        if "environment" not in manifest:
            manifest["environment"] = environment()
        manifest["suite"] = invocation.get("suite", manifest.get("suite"))
        manifest["invocations"].append(invocation)
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        tmp.replace(self.manifest_path)

    def read_manifest(self) -> dict | None:
        if not self.manifest_path.is_file():
            return None
        return json.loads(self.manifest_path.read_text())

    def append(self, record: Record) -> None:
        with open(self.results_path, "a") as f:
            f.write(record.to_json() + "\n")
            f.flush()
            os.fsync(f.fileno())

    def measured_keys(self) -> set[tuple]:
        """Keys of the cells already measured (ok or oom) in this run."""
        return {
            tuple(row.get(f) for f in KEY_FIELDS)
            for row in self.rows()
            if row.get("status") in FINAL
        }

    def rows(self) -> list[dict]:
        """Every record stored so far, as parsed JSON, oldest first."""
        return _read_jsonl(self.results_path) if self.results_path.is_file() else []


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


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                # A run killed mid-write can leave a partial last line; anything else is bad input.
                if f.read().strip():
                    raise UsageError(f"unreadable results file {path}:{n}: {e.msg}") from None
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
        for row in _read_jsonl(path):
            version = row.get("schema_version")
            if version != SCHEMA_VERSION:
                raise UsageError(
                    f"results file {path} has schema version {version!r}; "
                    f"this revbench reads version {SCHEMA_VERSION}"
                )
            row["source_file"] = str(path)
            rows.append(row)
    df = pd.DataFrame(rows, columns=[*RECORD_FIELDS, "source_file"])
    if latest_only and not df.empty:
        df = df.drop_duplicates(subset=list(KEY_FIELDS), keep="last").reset_index(drop=True)
    return df


def load_manifests(*paths: str | Path) -> list[dict]:
    manifests = []
    for path in result_files(list(paths)):
        m = path.parent / MANIFEST_FILE
        if m.is_file():
            manifests.append(json.loads(m.read_text()))
    return manifests


def export_csv(df: pd.DataFrame, path: str | Path) -> None:
    df.to_csv(path, index=False)


# ------------------------------------------------------------------------ derived


FIT_GROUP = ["model", "variant", "mode", "resolution", "precision", "scenario", "method"]


def per_sample_fit(df: pd.DataFrame) -> pd.DataFrame:
    """Memory per sample and fixed memory per model configuration.

    Least-squares line of peak bytes over batch size, over the `ok` rows of each
    (model, variant, mode, resolution, precision, scenario, method): the slope is the
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
