"""Scaling out: --jobs workers, --gpus pinning, many writers on one run directory, and the
submitit launcher end to end on its local executor."""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest
from revbench_launch_helpers import run_dirs
from rich.console import Console

from revbench.errors import UsageError
from revbench.launcher import PoolLauncher, RunContext, cpu_slots, gpu_slots
from revbench.loading import load
from revbench.progress import CellProgress
from revbench.records import Record
from revbench.runner import resolve_gpus, run_cells
from revbench.store import RunStore
from revbench.suite import make_cell

FAULTS = "revbench_fault_models"

SUITE = """
description = "tiny scale-out"
[defaults]
batch_sizes = [1, 2, 3]
warmup_steps = 1
measure_steps = 1
timeout_s = 120
[[group]]
name = "probe"
models = ["test_tiny_cnn", "test_crash"]
resolutions = [32]
"""


@pytest.fixture
def suite(suite_file):
    return suite_file(SUITE, "scale")


def _run_dir(out):
    (run_dir,) = run_dirs(out)
    return run_dir


def _keys(run_dir):
    return [Record(**row).key for row in RunStore(run_dir).rows()]


def test_jobs_share_the_cells_into_one_run_and_resume(run_cli, tmp_path, suite):
    out = tmp_path / "out"
    # A first run of one cell (in-process: cheap), then --resume with two workers for the rest.
    code, _, err = run_cli(
        "run", "--suite", suite, "--device", "estimate", "--out", str(out), "--no-thop",
        "--models", "test_tiny_cnn", "--batch-sizes", "1", "--no-isolate",
    )  # fmt: skip
    assert code == 0, err
    run_dir = _run_dir(out)
    code, _, err = run_cli(
        "run", "--suite", suite, "--device", "estimate", "--out", str(out), "--no-thop",
        "--jobs", "2", "--resume",
    )  # fmt: skip
    assert code == 0, err
    assert "1 cell(s) already measured, 5 to go" in err
    keys = _keys(run_dir)
    assert len(keys) == len(set(keys)) == 6  # every cell once: none lost, none twice
    df = load(run_dir)
    assert set(df[df["model"] == "test_tiny_cnn"]["status"]) == {"ok"}
    assert set(df[df["model"] == "test_crash"]["status"]) == {"error"}
    # counted once per model, and every row of the model carries the counts
    assert df[df["model"] == "test_tiny_cnn"]["params"].notna().all()
    last = json.loads((run_dir / "manifest.json").read_text())["invocations"][-1]
    assert (last["launcher"], last["jobs"]) == ("local", 2)
    assert sorted(w["worker"] for w in last["workers"]) == [0, 1]
    assert sum(w["cells"] for w in last["workers"]) == 5
    assert all(w["host"] for w in last["workers"])


def test_cpu_workers_share_the_cores_unless_the_user_set_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert cpu_slots(4) == [{"OMP_NUM_THREADS": "4"}] * 4
    assert cpu_slots(32) == [{"OMP_NUM_THREADS": "1"}] * 32  # never zero threads
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_slots(2) == [{}, {}]  # the user's setting reaches every worker as it is


def _append_many(run_dir: str, writer: int, n: int) -> None:
    store = RunStore(run_dir)
    for i in range(n):
        cell = make_cell("test_tiny_cnn", resolution=32, batch_size=1 + writer * n + i)
        store.append(Record.for_cell(cell, message="x" * 3000))  # lines larger than a page


def test_many_processes_append_without_losing_or_tearing_a_row(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    writers, n = 4, 25
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(run_dir), w, n)) for w in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = RunStore(run_dir).rows()  # every line validated: a torn line would raise
    assert sorted(r["batch_size"] for r in rows) == list(range(1, writers * n + 1))


def test_gpus_pin_one_worker_per_card(tmp_path):
    # No GPU here: the estimator runs the cells, and a model that fails naming the card it
    # was pinned to shows which worker took each cell.
    store = RunStore(tmp_path)
    # four models: the estimator keeps one model's batch sizes on one slot
    cells = [
        make_cell("test_which_card", resolution=32, batch_size=1, overrides={"width": w})
        for w in (4, 8, 12, 16)
    ]
    console = Console(quiet=True)
    summary = run_cells(
        store,
        cells,
        PoolLauncher(gpu_slots(["0", "1"])),
        CellProgress(console, total=0),
        context=RunContext(thop=False),
    )
    messages = [r.message for r in summary.records]
    assert len(messages) == 4
    cards = {m.split("CUDA_VISIBLE_DEVICES=")[1].split()[0].strip(";") for m in messages}
    assert cards == {"0", "1"}


def test_gpus_all_without_a_gpu_and_bad_fan_outs_are_usage_errors(run_cli, tmp_path, suite):
    with pytest.raises(UsageError, match="no CUDA GPU is visible"):
        resolve_gpus("all")
    with pytest.raises(UsageError, match="--gpus '0,x' is invalid"):
        resolve_gpus("0,x")
    out = tmp_path / "out"
    for argv, message in [
        (["--gpus", "all"], "--gpus all: no CUDA GPU is visible"),
        (["--jobs", "0"], "--jobs 0 is invalid"),
        (["--gpus", "0"], "--gpus applies to --device cuda"),
        (["--launcher", "slurm"], "--launcher 'slurm' is invalid; valid: local, submitit"),
        (["--slurm-partition", "gpu"], "apply to --launcher submitit"),
        (["--launcher", "submitit", "--jobs", "2"], "--launcher submitit schedules"),
        (["--launcher", "submitit", "--slurm-time", "0"], "--slurm-time 0 is invalid"),
    ]:
        code, _, err = run_cli(
            "run", "--suite", suite, "--device", "estimate", "--out", str(out), *argv
        )
        assert code == 2, argv
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()  # nothing half-written


def test_submitit_job_array_dead_job_row_and_resume_locally(run_cli, tmp_path, suite, monkeypatch):
    pytest.importorskip("submitit", reason="the submitit launcher needs submitit (in .[dev])")
    monkeypatch.setenv("REVBENCH_PLUGINS", f"{os.environ['REVBENCH_PLUGINS']},{FAULTS}")
    __import__(FAULTS)
    out = tmp_path / "out"
    # Two jobs (no sbatch here: submitit's local executor): one measures its cell, one
    # segfaults in its worker, and the job writes that cell's row as the local launcher does.
    code, _, err = run_cli(
        "run", "--suite", suite, "--device", "estimate", "--out", str(out), "--no-thop",
        "--launcher", "submitit", "--models", "test_tiny_cnn,test_segfaults",
        "--batch-sizes", "1",
    )  # fmt: skip
    assert code == 0, err
    run_dir = _run_dir(out)
    rows = {r["model"]: r for r in RunStore(run_dir).rows()}
    assert rows["test_tiny_cnn"]["status"] == "ok" and rows["test_tiny_cnn"]["params"]
    dead = rows["test_segfaults"]
    # how it died, as the local workers say it: the signal, not submitit's "FINISHED"
    assert dead["status"] == "error" and dead["message"].startswith("worker killed by SIGSEGV")
    last = json.loads((run_dir / "manifest.json").read_text())["invocations"][-1]
    assert (last["launcher"], last["executor"]) == ("submitit", "local")
    assert len(last["workers"]) == 2 and all(w["job"] for w in last["workers"])
    assert any(w["host"] for w in last["workers"])  # the job that lived said where it ran
    # The run started on submitit is finished locally: its measured cell is skipped.
    code, _, err = run_cli(
        "run", "--suite", suite, "--device", "estimate", "--out", str(out), "--no-thop",
        "--models", "test_tiny_cnn", "--batch-sizes", "1,2", "--resume", "--no-isolate",
    )  # fmt: skip
    assert code == 0, err
    assert "1 cell(s) already measured, 1 to go" in err
    keys = _keys(run_dir)
    assert len(keys) == len(set(keys)) == 3


@pytest.mark.parametrize("method, together", [("estimate", True), ("cpu", False)])
def test_estimate_cells_of_one_model_stay_on_one_slot_real_runs_spread(tmp_path, method, together):
    # The estimator answers a model's other batch sizes from its first's traces, so a pool
    # keeps each model on the slot that took it; cpu and cuda cells go to any free slot.
    import threading
    import time

    from revbench_launch_helpers import FunctionLauncher

    from revbench.outcome import Outcome

    ran: list[tuple[str, str, int]] = []
    guard = threading.Lock()

    def launch(cell, snapshot=None, **_):
        time.sleep(0.05 if cell.batch_size == 1 else 0.01)  # the first batch costs most
        with guard:
            ran.append((threading.current_thread().name, cell.variant, cell.batch_size))
        return Outcome("ok")

    launcher = FunctionLauncher(launch)
    launcher.slots = 2
    cells = [
        make_cell("test_tiny_cnn", resolution=32, batch_size=b, method=method,
                  overrides={"width": w})
        for w in (4, 8, 12) for b in (1, 2, 3)
    ]  # fmt: skip
    store = RunStore.create(tmp_path, "s")
    console = Console(quiet=True)
    run_cells(store, cells, launcher, CellProgress(console, total=0), context=RunContext())
    assert len(ran) == 9
    slots_of: dict[str, set] = {}
    for slot, variant, _ in ran:
        slots_of.setdefault(variant, set()).add(slot)
    assert all(len(s) == 1 for s in slots_of.values()) == together, slots_of
    assert len({slot for slot, _, _ in ran}) == 2  # both slots worked


def test_two_slots_count_a_model_once_while_other_models_wait(tmp_path):
    # Two configurations of one model (modes: the same counts) come first in the suite; the
    # second slot takes the other model rather than count the first one again at once.
    import threading
    import time

    from revbench_launch_helpers import FunctionLauncher

    from revbench.measurement import Counts
    from revbench.outcome import Outcome

    counted: list[str] = []
    guard = threading.Lock()

    def launch(cell, snapshot=None, counts=False, **_):
        time.sleep(0.05)
        if not counts:
            return Outcome("ok")
        with guard:
            counted.append(cell.variant)
        return Outcome("ok", counts=Counts(params=1, macs=2, macs_thop=3))

    launcher = FunctionLauncher(launch)
    launcher.slots = 2
    cells = [
        make_cell("test_tiny_cnn", resolution=32, batch_size=b, mode=mode, overrides=o)
        for mode, o in [("vanilla", {}), ("checkpoint", {}), ("vanilla", {"width": 4})]
        for b in (1, 2)
    ]  # fmt: skip
    store = RunStore.create(tmp_path, "s")
    summary = run_cells(
        store, cells, launcher, CellProgress(Console(quiet=True), total=0), context=RunContext()
    )
    assert sorted(counted) == ["", "width=4"], counted  # each model counted once
    assert all(r.params == 1 for r in summary.records)  # and every row has its counts


def test_a_prestarted_worker_serves_the_pool_that_wants_its_environment():
    # `revbench run` starts its first worker before it loads torch itself; the pool whose
    # workers get that environment takes it, and one nobody takes is killed.
    from revbench import worker

    worker.prestart({"OMP_NUM_THREADS": "1"})
    worker.prestart(None)
    one_thread, plain = worker._PRESTARTED
    pool = worker.WorkerPool({"OMP_NUM_THREADS": "1"})
    try:
        outcome = pool.run(make_cell("test_tiny_cnn", resolution=32, batch_size=1), counts=False)
        assert outcome.status == "ok", outcome.message
        assert pool._warm == [one_thread] and worker._PRESTARTED == [plain]
    finally:
        pool.close()
        worker.discard_prestarted()
    assert worker._PRESTARTED == [] and plain.proc.wait(timeout=30) < 0  # killed


def _cells(models: int, batches=(1, 2, 3), model="test_tiny_cnn"):
    return [
        make_cell(model, resolution=32, batch_size=b, overrides={"width": 4 * (m + 1)})
        for m in range(models) for b in batches
    ]  # fmt: skip


@pytest.mark.parametrize("cores", [1, 2, 16])
def test_jobs_auto_is_one_worker_per_core_that_memory_holds(cores):
    from revbench.jobs import auto_jobs, worker_peak

    plenty = 10**13
    cells = _cells(models=4)
    assert auto_jobs(cells, cores=cores, memory=plenty)[0] == min(cores, 4)
    # never more workers than models: a model's batch sizes share one worker's traces
    assert auto_jobs(_cells(models=1), cores=cores, memory=plenty)[0] == 1
    # memory: as many workers as the available memory holds, less a reserve, at least one
    per_worker = worker_peak(cells)
    jobs, why = auto_jobs(cells, cores=cores, memory=int(per_worker * 2 / 0.85) + 1)
    assert jobs == min(cores, 2)
    assert auto_jobs(cells, cores=cores, memory=per_worker // 2)[0] == 1
    if cores > 2:
        assert "GB per worker" in why


def test_worker_memory_is_measured_per_family_and_path():
    from revbench.jobs import worker_memory, worker_peak

    table = worker_memory()
    assert {path for _, path in table} == {"fake", "real"}
    assert all(e.peak_bytes > 0 and e.measured_on for e in table.values())
    # a family with no measurement takes the largest of its path
    fake = max(e.peak_bytes for e in table.values() if e.path == "fake")
    assert worker_peak(_cells(models=1)) == fake  # the test family is not in the table


def test_jobs_auto_is_the_estimators_default_and_says_so(run_cli, tmp_path, suite_file):
    suite = suite_file(
        '[defaults]\nbatch_sizes = [1, 2]\n[[group]]\nname = "t"\nmodels = ["test_tiny_cnn"]\n'
        "resolutions = [32]\noverrides = { width = 4 }\n",
        "auto",
    )
    code, _, err = run_cli("run", "--suite", suite, "--device", "estimate", "--no-thop",
                           "--out", str(tmp_path / "e"))  # fmt: skip
    assert code == 0, err
    manifest = json.loads((run_dirs(tmp_path / "e")[0] / "manifest.json").read_text())
    assert manifest["invocations"][-1]["jobs"] == 1  # one model: one worker
    code, _, err = run_cli("run", "--suite", suite, "--device", "cpu", "--no-thop",
                           "--out", str(tmp_path / "c"), "--jobs", "auto")  # fmt: skip
    assert code == 0, err
    for bad in ("0", "x", "-3"):
        code, _, err = run_cli("run", "--suite", suite, "--jobs", bad, "--dry-run")
        assert code == 2 and f"--jobs {bad} is invalid; valid: an integer >= 1, or auto" in err


def test_resume_after_a_killed_submitter_never_measures_a_cell_twice(tmp_path, suite_file):
    pytest.importorskip("submitit", reason="the submitit launcher needs submitit (in .[dev])")
    import signal
    import subprocess
    import sys
    import time

    suite = suite_file(
        '[defaults]\nbatch_sizes = [1]\ntimeout_s = 120\n[[group]]\nname = "h"\n'
        'models = ["test_hangs", "test_tiny_cnn"]\nresolutions = [32]\n',
        "hang",
    )
    out = tmp_path / "out"
    env = {**os.environ, "REVBENCH_PLUGINS": f"{os.environ['REVBENCH_PLUGINS']},{FAULTS}"}
    argv = [sys.executable, "-m", "revbench.cli", "run", "--suite", suite, "--device",
            "estimate", "--no-thop", "--out", str(out)]  # fmt: skip
    submitter = subprocess.Popen(
        [*argv, "--launcher", "submitit", "--models", "test_hangs"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    for line in submitter.stderr:  # kill -9 once the array is submitted
        if "submitted 1 job(s)" in line or time.monotonic() > deadline:
            break
    submitter.send_signal(signal.SIGKILL)
    submitter.wait()
    run_dir = _run_dir(out)
    # at once: the job is still running and will write its row, so resuming is refused
    again = subprocess.run([*argv, "--resume"], env=env, capture_output=True, text=True)
    assert again.returncode == 2, again.stderr
    assert "1 submitit job(s) of an earlier invocation are still queued or running" in (
        again.stderr
    )
    assert "--cancel-pending" in again.stderr and RunStore(run_dir).rows() == []
    # --cancel-pending cancels it (its cell never gets a row from it) and goes on
    again = subprocess.run(
        [*argv, "--resume", "--cancel-pending", "--models", "test_tiny_cnn"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0, again.stderr
    assert "cancelled 1 submitit job(s)" in again.stderr
    time.sleep(1)
    assert [r["model"] for r in RunStore(run_dir).rows()] == ["test_tiny_cnn"]
