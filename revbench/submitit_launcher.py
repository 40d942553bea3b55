"""The submitit launcher: a suite's cells as a submitit job array (`--launcher submitit`).

submitit's `AutoExecutor` submits to Slurm where `sbatch` exists and runs the jobs as local
processes otherwise; revbench schedules nothing itself. Each job runs the run's task on
one cell, in a worker process as the local launcher does (a failed, crashed or hung cell
becomes its status, naming the signal or exit code), counts its model, and appends the
record to the run directory itself, through the store's per-record flock
(`RunStore.append`), so the jobs' rows land even if this process is gone by the time they
run (then `--resume` later skips them).
The array (job ids and cells) is recorded in the run directory as soon as it is submitted:
`--resume` refuses to run beside jobs still queued or running (`--cancel-pending` cancels
them), so no cell is measured twice. This process waits for the array and turns a job
that died without writing its row (OOM-killed, preempted, past its time) into a row with
its status. The
manifest's invocation records each job's id, host and GPU.

A cell's timeout here is its job's time limit (`--slurm-time`, minutes; default: the longest
cell timeout plus start-up), not the per-cell timeout the local workers enforce.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from . import status
from .cell import KEY_FIELDS, Cell
from .errors import UsageError, naming
from .execute import run_inline
from .launcher import Finished, Launcher, PoolLauncher, RunContext, Slot, Task, measure_task
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
    """A job's body (runs on the compute node): the run's task with its cells in a worker
    process under their timeouts, as on the local launcher (measure, count), the record
    appended, a report of where it ran. A cell that segfaults or exits takes only its
    worker down: the job writes its row, naming the signal or exit code as the local
    launcher does."""
    cell = Cell.from_json(cell_json)
    launcher = PoolLauncher([{}])
    try:
        record = task(cell, Slot(launcher, 0, RunContext(thop=thop)))
    finally:
        launcher.close()
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
    """A dead job's row status and message: how it ended (the signal or exit code, as the
    local workers say it) and the last line of its error, from the scheduler's state."""
    try:
        state = str(job.state).upper()
    except Exception:  # the scheduler could not be asked: the exception says what it knows
        state = "UNKNOWN"
    how = _how_it_ended(job)
    if how is None:  # submitit's local executor keeps no exit code: say what is known
        how = "died without a result" if state in ("FINISHED", "UNKNOWN") else state
    text = str(exc).strip().splitlines()
    # the last line of a job's traceback names the error; submitit's own log lines do not
    lines = [line for line in text if line.strip() and "submitit INFO" not in line]
    what = lines[-1].strip() if lines else type(exc).__name__
    if "OUT_OF_MEMORY" in state or "OUT_OF_ME" in state:
        return status.OOM, f"job {job.job_id} {how}: {what}"[:500]
    if "TIMEOUT" in state:
        return status.TIMEOUT, f"job {job.job_id} {how}: past its time limit"[:500]
    return status.ERROR, f"job {job.job_id} {how}: {what}"[:500]


def _how_it_ended(job) -> str | None:
    """'killed by SIGSEGV' or 'exited with code 3', where the executor can tell: the local
    executor's process, or Slurm's ExitCode (code:signal)."""
    import signal

    code = getattr(getattr(job, "_process", None), "returncode", None)
    if code is None:
        try:
            exit_code = str(job.get_info().get("ExitCode", ""))
        except Exception:
            exit_code = ""
        if ":" in exit_code:
            ret, sig = exit_code.split(":", 1)
            if sig.strip().isdigit() and int(sig):
                code = -int(sig)
            elif ret.strip().isdigit():
                code = int(ret)
    if code is None or code == 0:
        return None
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


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
        record_submitted(self.store, executor, jobs, cells)
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


# ------------------------------------------------------- submitted arrays, across invocations

SUBMITTED_FILE = "submitit-jobs.json"


def record_submitted(store: RunStore, executor, jobs, cells: list[Cell]) -> None:
    """Add the array just submitted to the run directory's list, before waiting on it: a
    submitter killed now leaves behind which jobs still append to this run."""
    path = store.dir / SUBMITTED_FILE
    arrays = _read_submitted(path)
    arrays.append(
        {
            "cluster": executor.cluster,
            "folder": str(executor.folder),
            "jobs": [{"job_id": j.job_id, "cell": c.to_json()} for j, c in zip(jobs, cells)],
        }
    )
    tmp = path.with_suffix(".tmp")
    with naming(path):
        tmp.write_text(json.dumps(arrays, indent=1))
        tmp.replace(path)


def _read_submitted(path: Path) -> list[dict]:
    try:
        arrays = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} is unreadable ({e}); move it aside to resume") from None
    return arrays if isinstance(arrays, list) else []


def _job(cluster: str, folder: str, job_id: str):
    """The job as submitit sees it from this process."""
    if cluster == "slurm":
        from submitit.slurm.slurm import SlurmJob

        return SlurmJob(folder=folder, job_id=job_id)
    return None  # local: a process on this machine, its pid the job id


def _still_active(cluster: str, folder: str, job_id: str) -> bool:
    if cluster == "slurm":
        state = str(_job(cluster, folder, job_id).state).upper()
        return state in ("PENDING", "RUNNING", "REQUEUED", "SUSPENDED", "CONFIGURING")
    try:  # submitit's local executor: the job id is the job's pid
        pid = int(job_id.split("_")[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (ValueError, OSError):
        return False
    return b"submitit" in cmdline


def active_jobs(store: RunStore) -> list[dict]:
    """Jobs of earlier invocations whose cell has no row yet and that are still queued or
    running: they will append to this run (each entry: cluster, folder, job_id, cell)."""
    arrays = _read_submitted(store.dir / SUBMITTED_FILE)
    if not arrays:
        return []
    stored = {tuple(row.get(f) for f in KEY_FIELDS) for row in store.rows()}
    out = []
    for array in arrays:
        for job in array.get("jobs", []):
            cell = Cell.from_json(job["cell"])
            if cell.key in stored:
                continue
            if _still_active(array["cluster"], array["folder"], str(job["job_id"])):
                out.append({**job, "cluster": array["cluster"], "folder": array["folder"]})
    return out


def cancel(jobs: list[dict]) -> None:
    """Cancel queued or running jobs (scancel on Slurm, a kill locally) and wait for them."""
    import signal
    import time

    for job in jobs:
        if job["cluster"] == "slurm":
            _job(job["cluster"], job["folder"], str(job["job_id"])).cancel(check=False)
            continue
        try:
            os.kill(int(str(job["job_id"]).split("_")[0]), signal.SIGKILL)
        except (ValueError, ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
        _still_active(j["cluster"], j["folder"], str(j["job_id"])) for j in jobs
    ):
        time.sleep(0.2)


def _json(text: str) -> dict:
    return json.loads(text)
