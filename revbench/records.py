"""Records: the typed row one measured cell leaves, its schema version and its validation.

A results file (`results.jsonl`, `revbench.store`) holds one record per line. Files are
parsed as JSON, never evaluated, and every record is validated as it is read: a JSON object
of this schema version whose figures are finite non-negative numbers. A last line without
its newline is what an interrupted write leaves; readers leave it out.

Imports neither torch nor pandas: writers, the gate and `--resume` read records without them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from .cell import KEY_FIELDS, Cell, cell_label, method_card
from .errors import UsageError
from .measurement import Counts, MaxBatch, Measurement
from .status import OK, STATUSES
from .tasks import task_geometry

SCHEMA_VERSION = 1


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
    card: str  # the card an estimate is for (revbench.cards); "cpu", or "" for cuda
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
    mem_library_workspace_bytes: int | None = None  # a card's cuBLAS workspaces (estimate)
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
    # the estimator's version (estimates only), and whether the estimate was answered from
    # the estimate cache (revbench.estimate_cache) rather than run now
    estimator_version: int | None = None
    from_cache: bool = False
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
        from_cache: bool = False,
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
            card=cell.card,
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
            from_cache=from_cache,
        )

    @property
    def key(self) -> tuple:
        return tuple(getattr(self, f) for f in KEY_FIELDS)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


RECORD_FIELDS = tuple(f.name for f in fields(Record))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------- reading

# Record fields by type, for validation. Figures (counts, memory, time, steps) are finite
# non-negative numbers or null: a NaN, an infinity, a negative or a string in a results file
# would otherwise pass through comparisons (NaN compares false) and fake a verdict.
BUDGET_FIELDS = ("budget_bytes", "margin")  # key fields that are numbers or null
_TEXT_FIELDS = (
    *(f for f in KEY_FIELDS if f not in ("resolution", "batch_size", *BUDGET_FIELDS)),
    "status",
)
_SIDE_FIELDS = ("resolution", "batch_size")
_FIGURE_FIELDS = (
    *(f.name for f in fields(Counts)),
    *(f.name for f in fields(Measurement) if f.name not in ("snapshot_file", "note")),
    "warmup_steps",
    *BUDGET_FIELDS,
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
    if "card" not in row and isinstance(row.get("method"), str):
        # Written before estimates named a card: they were the CPU kernels' step (no
        # card's libraries in them), and a measured row's card is its method's.
        row["card"] = method_card(row["method"]) or "cpu"
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
