"""The submitit launcher: a suite's cells as a submitit job array (`--launcher submitit`).

submitit's `AutoExecutor` submits to Slurm where `sbatch` exists and runs the jobs as local
processes otherwise; revbench schedules nothing itself. Each job measures one cell in its
own fresh process (the run's task on `revbench.launcher.InlineLauncher`: a failed cell
becomes its status), counts its model, and appends the record to the run directory
itself, through the store's per-record flock (`RunStore.append`), so the jobs' rows land
even if this process is gone by the time they run (then `--resume` later skips them).
This process waits for the array and turns a job that died without writing its row
(OOM-killed, preempted, past its time, a segfault) into a row with its status. The
manifest's invocation records each job's id, host and GPU.

A cell's timeout here is its job's time limit (`--slurm-time`, minutes; default: the longest
cell timeout plus start-up), not the per-cell timeout the local workers enforce.
"""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from . import status
from .cell import Cell
from .errors import UsageError
from .execute import run_inline
from .launcher import Finished, InlineLauncher, Launcher, RunContext, Slot, Task, measure_task
from .outcome import Outcome, Request
from .records import Record
from .store import RunStore

STARTUP_MIN = 5  # a job's interpreter, torch and registry start-up, on top of its cell


@dataclass(frozen=True)
class JobReport:
    """What a job sends back: where it ran and the record it appended."""

    host: str
    gpu: str | None  # CUDA_VISIBLE_DEVICES as the job saw it
    job_id: str | None  # SLURM_JOB_ID (with the array index), or None locally
    record: str  # the record's JSON line


def run_task_job(cell_json: str, run_dir: str, thop: bool, task: Task = measure_task) -> dict:
    """A job's body (runs on the compute node): the run's task on the inline launcher
    (measure, count), the record appended, a report of where it ran."""
    cell = Cell.from_json(cell_json)
    record = task(cell, Slot(InlineLauncher(), 0, RunContext(thop=thop)))
    RunStore(Path(run_dir)).append(record)
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job_id = (
        f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
        if array
        else os.environ.get("SLURM_JOB_ID")
    )
    return asdict(
        JobReport(
            host=socket.gethostname(),
            gpu=os.environ.get("CUDA_VISIBLE_DEVICES"),
            job_id=job_id,
            record=record.to_json(),
        )
    )


def check_options(options: dict) -> None:
    """Refuse submitit missing or a bad --slurm-* value (a UsageError, before any write)."""
    try:
        import submitit  # noqa: F401
    except ModuleNotFoundError:
        raise UsageError(
            "--launcher submitit needs the submitit package: pip install 'revbench[slurm]'"
        ) from None
    least = {"time_min": 1, "gpus_per_task": 0, "array_parallelism": 1}
    flags = {"time_min": "--slurm-time", "gpus_per_task": "--slurm-gpus-per-task"}
    for name, minimum in least.items():
        value = options.get(name)
        if value is not None and value < minimum:
            flag = flags.get(name, "--" + name.replace("_", "-"))
            raise UsageError(f"{flag} {value} is invalid; valid: an integer >= {minimum}")


def make_executor(cells: list[Cell], store: RunStore, options: dict):
    """submitit's AutoExecutor for these cells (Slurm where sbatch exists, else local)."""
    import submitit

    folder = Path(options.get("folder") or store.dir / "submitit")
    executor = submitit.AutoExecutor(folder=folder)
    cuda = any(c.method == "cuda" for c in cells)
    gpus = options.get("gpus_per_task")
    longest = max(c.timeout_s for c in cells) if cells else 0
    params = {
        "name": f"revbench-{store.dir.parent.name}",
        "timeout_min": options.get("time_min") or int(longest // 60) + 1 + STARTUP_MIN,
        "nodes": 1,
        "tasks_per_node": 1,
        "gpus_per_node": gpus if gpus is not None else (1 if cuda else 0),
    }
    if options.get("partition"):
        params["slurm_partition"] = options["partition"]
    if options.get("array_parallelism"):
        params["slurm_array_parallelism"] = options["array_parallelism"]
    executor.update_parameters(**params)
    return executor


def _died_status(job, exc: BaseException) -> tuple[str, str]:
    """A dead job's row status and message, from the scheduler's state when it has one."""
    try:
        state = str(job.state).upper()
    except Exception:  # the scheduler could not be asked: the exception says what it knows
        state = "UNKNOWN"
    text = str(exc).strip().splitlines()
    # the last line of a job's traceback names the error; the first says which job
    what = next((line for line in reversed(text) if line.strip()), type(exc).__name__)
    if "OUT_OF_MEMORY" in state or "OUT_OF_ME" in state:
        return status.OOM, f"job {job.job_id} {state}: {what}"[:500]
    if "TIMEOUT" in state:
        return status.TIMEOUT, f"job {job.job_id} {state}: past its time limit"[:500]
    return status.ERROR, f"job {job.job_id} {state}: {what}"[:500]


class SubmititLauncher(Launcher):
    """Cells as one submitit job array, every job at once (the scheduler decides how many
    run together: --array-parallelism)."""

    name = "submitit"

    def __init__(self, store: RunStore, options: dict, console: Console) -> None:
        self.store, self.options, self.console = store, options, console
        self.report: dict = {}  # for the manifest: the executor and each job's host and GPU

    def launch(self, request: Request, slot: int = 0) -> Outcome:
        """One request as one job, waited for (a task's probe, should one ever run here)."""
        executor = make_executor([request.cell], self.store, self.options)
        job = executor.submit(
            run_inline,
            request.cell,
            request.snapshot_path,
            counts=request.counts,
            thop=request.thop,
        )
        try:
            return job.result()
        except Exception as exc:
            return Outcome(*_died_status(job, exc))

    def manifest_fields(self, served: list[int]) -> dict:
        return self.report

    def interrupted_message(self, saved: int, run_dir: Path) -> str:
        return (
            f"[red]interrupted[/]: {saved} cell(s) collected; jobs still queued or "
            f"running append their rows to {run_dir}; collect the rest with --resume"
        )

    def run_all(self, cells: list[Cell], task: Task, context: RunContext):
        from submitit.helpers import as_completed

        if not cells:
            return
        executor = make_executor(cells, self.store, self.options)
        jobs = executor.map_array(
            run_task_job,
            [c.to_json() for c in cells],
            [str(self.store.dir)] * len(cells),
            [context.thop] * len(cells),
            [task] * len(cells),
        )
        self.console.print(
            f"submitted {len(jobs)} job(s) to submitit's {executor.cluster} executor "
            f"(logs: {executor.folder})"
        )
        by_job = {id(job): cell for job, cell in zip(jobs, cells)}
        workers: list[dict] = []
        self.report = {"executor": executor.cluster, "workers": workers}
        for job in as_completed(jobs, poll_frequency=1):
            cell = by_job[id(job)]
            try:
                report = job.result()
            except Exception as exc:  # the job died before it could write its row
                row_status, message = _died_status(job, exc)
                record = Record.for_cell(cell, status=row_status, message=message)
                workers.append({"job": job.job_id, "host": None, "gpu": None})
                yield Finished(cell, record)
            else:
                workers.append(
                    {
                        "job": report["job_id"] or job.job_id,
                        "host": report["host"],
                        "gpu": report["gpu"],
                    }
                )
                yield Finished(cell, Record(**_json(report["record"])), stored=True)


def _json(text: str) -> dict:
    import json

    return json.loads(text)
