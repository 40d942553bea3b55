"""Faults and hostile input, end to end: a failing cell becomes a row and the run goes on;
bad input is one line, exit 2, and nothing written; no row is ever lost, duplicated or
mislabelled; the gate's exit 1 means a regression and nothing else.

Each case asserts the exit code, the message, the files written and the rows before and
after. The fault models (tests/revbench_fault_models.py) are a plugin, loaded by every
worker the way a user's models are.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from revbench.cell import KEY_FIELDS
from revbench.errors import UsageError
from revbench.launcher import Worker, WorkerPool, run_inline, run_isolated
from revbench.loading import load
from revbench.measurement import Counts, Measurement
from revbench.records import Record, read_records
from revbench.store import RunStore
from revbench.suite import make_cell

FAULTS = "revbench_fault_models"
# Workers import REVBENCH_PLUGINS (conftest puts tests/ on PYTHONPATH); this process, now.
if FAULTS not in os.environ["REVBENCH_PLUGINS"].split(","):
    os.environ["REVBENCH_PLUGINS"] += f",{FAULTS}"
__import__(FAULTS)

TESTS = Path(__file__).resolve().parent


def write_suite(path: Path, models: list[str], **defaults) -> str:
    """A suite of `models` at 32 px, batch 2, one cpu-cheap step; `defaults` override."""
    table = {"batch_sizes": [2], "warmup_steps": 0, "measure_steps": 1, **defaults}
    lines = ["[defaults]", *(f"{k} = {json.dumps(v)}" for k, v in table.items())]
    lines += ["[[group]]", f"models = {json.dumps(models)}", "resolutions = [32]"]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def only_run(out: Path) -> Path:
    (run_dir,) = [p.parent for p in out.glob("*/*/manifest.json")]
    return run_dir


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes: what "nothing written" is checked against."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def one_line_exit_2(result) -> str:
    code, _, err = result
    assert code == 2, err
    assert err.startswith("revbench: error: ") and err.count("\n") == 1, err
    return err


# ------------------------------------------------------------------- cells that fail


def test_failing_cells_become_rows_and_the_run_goes_on(run_cli, tmp_path):
    # One run: each fault in its own cell, a healthy cell after them. The hang gets a short
    # timeout of its own; start-up is not part of any cell's time.
    suite = tmp_path / "faults.toml"
    write_suite(suite, ["test_raises", "test_segfaults", "test_exits"], timeout_s=60)
    suite.write_text(
        suite.read_text()
        + '[[group]]\nmodels = ["test_hangs"]\nresolutions = [32]\ntimeout_s = 1.5\n'
        + '[[group]]\nmodels = ["test_segfaults_when_counted", "test_tiny_cnn"]\n'
        + "resolutions = [32]\n"
    )
    out = tmp_path / "out"
    args = ("run", "--suite", str(suite), "--device", "cpu", "--no-thop")
    code, _, err = run_cli(*args, "--out", str(out))
    assert code == 0, err
    run_dir = only_run(out)
    rows = {r["model"]: r for r in read_records(run_dir / "results.jsonl")}
    assert len(read_records(run_dir / "results.jsonl")) == len(rows) == 6
    assert rows["test_raises"]["status"] == "error"
    assert rows["test_raises"]["message"] == "RuntimeError: forward failed on purpose"
    assert rows["test_hangs"]["status"] == "timeout"
    assert rows["test_hangs"]["message"] == "cell exceeded its timeout of 1.5 s"
    assert rows["test_segfaults"]["status"] == "error"
    assert rows["test_segfaults"]["message"].startswith("worker killed by SIGSEGV")
    assert "Segmentation fault" in rows["test_segfaults"]["message"]  # faulthandler's tail
    assert rows["test_exits"]["status"] == "error"
    assert rows["test_exits"]["message"].startswith("worker exited with code 3")
    # Counting crashed after the measurement: the measurement stands, the counts are missing.
    counted = rows["test_segfaults_when_counted"]
    assert counted["status"] == "ok" and counted["step_time_ms_median"] > 0
    assert counted["params"] is None
    assert "counting failed: worker killed by SIGSEGV" in counted["message"]
    tiny = rows["test_tiny_cnn"]
    # conv 3x3x3x8 + BatchNorm 2x8 + conv 3x3x8x8 with bias + linear 8x10 with bias
    assert tiny["params"] == 216 + 16 + 584 + 90
    assert tiny["status"] == "ok" and tiny["message"] == ""

    # --resume reruns the failed cells (not the measured ones), which fail again as rows.
    code, _, err = run_cli(*args, "--resume", str(run_dir), "--models", "test_raises")
    assert code == 0, err
    again = read_records(run_dir / "results.jsonl")
    assert [(r["model"], r["status"]) for r in again[6:]] == [("test_raises", "error")]
    assert len(load(run_dir)) == 6  # the latest row of each cell


def test_cpu_allocator_out_of_memory_is_an_oom_row():
    cell = make_cell("test_cpu_oom", resolution=32, batch_size=1, method="cpu", measure_steps=1)
    outcome = run_inline(cell)
    assert outcome.status == "oom"
    assert "DefaultCPUAllocator: can't allocate memory" in outcome.message


@pytest.mark.parametrize("method, expected", [("cpu", "oom"), ("estimate", "error")])
def test_a_worker_the_host_kills_is_oom_only_where_host_memory_is_the_device(method, expected):
    # SIGKILL from outside (the kernel's OOM killer): on cpu the cell ran out of its device's
    # memory; on the estimator (or cuda) the host did, which says nothing about the device,
    # so the row is an error that --resume retries.
    cell = make_cell("test_killed_by_host", resolution=32, batch_size=1, method=method)
    outcome = run_isolated(cell, counts=False)
    assert outcome.status == expected
    assert outcome.message.startswith(
        "worker killed by SIGKILL (not by revbench: most likely the host's out-of-memory killer)"
    )


def test_worker_start_up_is_not_counted_against_the_timeout(monkeypatch):
    # The worker takes 3 s more to import its plugins; the cell's timeout is 2 s.
    monkeypatch.setenv("REVBENCH_FAULTS_SLOW_START", "3")
    pool = WorkerPool()
    cell = make_cell(
        "test_tiny_cnn", resolution=32, batch_size=1, method="cpu", measure_steps=1, timeout_s=2
    )
    try:
        outcome = pool.run(cell, counts=False)
    finally:
        pool.close()
    assert outcome.status == "ok", outcome.message


def _dead(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"  # exited; its new parent has not reaped it yet


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_the_parent_kills_its_workers():
    # The worker asks for PR_SET_PDEATHSIG before its heavy imports (a second in); had the
    # parent died before that, it sees its new parent and exits: it dies either way.
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\n"
            "from revbench.launcher import Worker\n"
            "w = Worker(); time.sleep(1); print(w.proc.pid, flush=True); time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    worker = int(parent.stdout.readline())
    assert not _dead(worker)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while not _dead(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _dead(worker)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_stops_a_run_as_ctrl_c_does_and_keeps_its_rows(tmp_path):
    # A scheduler's time limit sends SIGTERM: the run stops the cell in flight (its worker
    # killed), keeps every finished row, says how to resume, and exits 143.
    suite = tmp_path / "term.toml"
    write_suite(suite, ["test_tiny_cnn"], batch_sizes=[1])
    suite.write_text(
        suite.read_text() + '[[group]]\nmodels = ["test_hangs"]\nresolutions = [32]\n'
    )
    marker = f"REVBENCH_TEST_RUN={tmp_path.name}"
    env = {**os.environ, "REVBENCH_TEST_RUN": tmp_path.name, "COLUMNS": "80"}
    out = tmp_path / "out"
    run = subprocess.Popen(
        [sys.executable, "-m", "revbench", "run", "--suite", str(suite), "--device", "cpu",
         "--no-thop", "--out", str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    seen = []
    for line in run.stdout:  # the healthy cell's line: the hanging one runs next
        seen.append(line)
        if " ok " in line:
            break
    run.send_signal(signal.SIGTERM)
    rest = run.stdout.read()
    assert run.wait(timeout=60) == 128 + signal.SIGTERM, "".join(seen) + rest
    assert "interrupted: 1 cell(s) saved" in rest and "continue with --resume" in rest
    rows = read_records(only_run(out) / "results.jsonl")
    assert [(r["model"], r["status"]) for r in rows] == [("test_tiny_cnn", "ok")]
    deadline = time.monotonic() + 15
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_with(marker) == []  # the hanging cell's worker went with the run


def test_a_worker_that_cannot_start_is_one_line(monkeypatch):
    monkeypatch.setattr(sys, "executable", "false")  # an interpreter that exits at once
    worker = Worker()
    with pytest.raises(UsageError, match=r"the cell worker could not start \(worker exited"):
        worker.wait_ready()


# --------------------------------------------------------------------- results store


@pytest.fixture
def measured_run(run_cli, tmp_path):
    """A finished estimate run of two cells: (argv to rerun it, its run directory)."""
    suite = write_suite(tmp_path / "two.toml", ["test_tiny_cnn"], batch_sizes=[1, 2])
    out = tmp_path / "out"
    argv = ("run", "--suite", suite, "--device", "estimate", "--out", str(out), "--no-thop")
    code, _, err = run_cli(*argv)
    assert code == 0, err
    return argv, only_run(out)


def test_a_torn_last_line_is_repaired_before_resuming(run_cli, measured_run):
    argv, run_dir = measured_run
    results = run_dir / "results.jsonl"
    whole = results.read_bytes()
    last = whole.splitlines()[-1]
    results.write_bytes(whole[: len(whole) - 1 - len(last) // 2])  # killed mid-write
    assert len(load(run_dir)) == 1  # readers leave the torn line out
    code, _, err = run_cli(*argv, "--resume", str(run_dir))
    assert code == 0, err
    assert "dropped a partial last line" in err and "1 cell(s) already measured, 1 to go" in err
    rows = read_records(results)
    assert results.read_bytes().endswith(b"\n") and len(rows) == 2
    assert len({tuple(r[f] for f in KEY_FIELDS) for r in rows}) == 2


def test_a_whole_last_record_without_its_newline_is_kept(run_cli, measured_run):
    argv, run_dir = measured_run
    results = run_dir / "results.jsonl"
    results.write_bytes(results.read_bytes()[:-1])
    code, _, err = run_cli(*argv, "--resume", str(run_dir))
    assert code == 0, err
    assert "completed its last record's line" in err
    assert "nothing to resume: all 2 cell(s) are in" in err
    assert len(read_records(results)) == 2


BAD_LINES = {
    "garbage": b"this is not json\n",
    "a JSON list": b"[1, 2]\n",
    "not UTF-8": b"\xff\xfe\xfd\n",
    "schema 0": b"schema_version=0",
    "NaN figure": b"peak_bytes=NaN",
    "string figure": b'peak_bytes="12"',
    "negative figure": b"peak_bytes=-1",
    "unknown status": b'status="fine"',
}


@pytest.mark.parametrize("case", BAD_LINES)
def test_resume_refuses_a_bad_results_file_and_writes_nothing(run_cli, measured_run, case):
    argv, run_dir = measured_run
    results = run_dir / "results.jsonl"
    first, second = results.read_bytes().splitlines(keepends=True)
    bad = BAD_LINES[case]
    if b"=" in bad and not bad.endswith(b"\n"):  # one field of a good record replaced
        name, value = bad.decode().split("=")
        row = json.loads(first) | {name: json.loads(value)}
        bad = json.dumps(row).encode() + b"\n"
    results.write_bytes(first + bad + second)  # the bad line in the middle
    before = snapshot(run_dir)
    err = one_line_exit_2(run_cli(*argv, "--resume", str(run_dir)))
    assert "results.jsonl:2: " in err
    assert snapshot(run_dir) == before


def test_resume_with_another_optimizer_measures_the_new_cells(run_cli, measured_run):
    argv, run_dir = measured_run
    code, _, err = run_cli(*argv, "--resume", str(run_dir), "--optimizer", "adamw")
    assert code == 0, err
    assert "already measured" not in err  # nothing skipped: every cell is new
    df = load(run_dir)
    assert sorted(df["optimizer"]) == ["adamw", "adamw", "sgd", "sgd"]
    sgd, adamw = (df[df["optimizer"] == o].set_index("batch_size") for o in ("sgd", "adamw"))
    # AdamW keeps two state tensors per parameter, SGD one: not the same measurement.
    assert (adamw["mem_optimizer_state_bytes"] > sgd["mem_optimizer_state_bytes"]).all()


def test_resume_refuses_another_method_or_suite(run_cli, measured_run, tmp_path):
    argv, run_dir = measured_run
    before = snapshot(run_dir)
    cpu = [a if a != "estimate" else "cpu" for a in argv]
    err = one_line_exit_2(run_cli(*cpu, "--resume", str(run_dir)))
    assert "method 'estimate'" in err and "method 'cpu'" in err
    other = write_suite(tmp_path / "other.toml", ["test_tiny_cnn"])
    err = one_line_exit_2(
        run_cli("run", "--suite", other, "--device", "estimate", "--resume", str(run_dir))
    )
    assert "suite 'two'" in err and "suite 'other'" in err
    assert snapshot(run_dir) == before


def test_resume_refuses_timings_over_other_step_counts(run_cli, tmp_path):
    suite = tmp_path / "timed.toml"
    out = tmp_path / "out"
    argv = ("run", "--suite", str(suite), "--device", "cpu", "--out", str(out), "--no-thop")
    write_suite(suite, ["test_tiny_cnn"], batch_sizes=[1, 2])
    code, _, err = run_cli(*argv)
    assert code == 0, err
    run_dir = only_run(out)
    before = snapshot(run_dir)
    write_suite(suite, ["test_tiny_cnn"], batch_sizes=[1, 2], measure_steps=3)
    err = one_line_exit_2(run_cli(*argv, "--resume", str(run_dir)))
    assert "was timed with measure_steps 1, this command asks 3" in err
    assert snapshot(run_dir) == before


def test_a_second_writer_is_refused_and_names_the_holder(run_cli, measured_run):
    argv, run_dir = measured_run
    before = snapshot(run_dir)
    with RunStore(run_dir).lock():  # as a live run holds it
        err = one_line_exit_2(run_cli(*argv, "--resume", str(run_dir)))
    assert f"is being written by pid {os.getpid()} on host " in err
    assert snapshot(run_dir) == before
    # The manifest still names that pid, but the lock went with its holder: not stale.
    code, _, err = run_cli(*argv, "--resume", str(run_dir))
    assert code == 0 and "nothing to resume: all 2 cell(s) are in" in err


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path):
    first, second = RunStore.create(tmp_path, "s"), RunStore.create(tmp_path, "s")
    assert first.dir != second.dir and first.dir.is_dir() and second.dir.is_dir()


# -------------------------------------------------------------------- output targets


def _bad_targets(tmp: Path) -> dict[str, str]:
    (tmp / "a_file").write_text("x")
    run = tmp / "results" / "smoke" / "20260101-000000"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text('{"invocations": []}')
    return {
        "empty": "",
        "a file": str(tmp / "a_file"),
        "under a file": str(tmp / "a_file" / "below"),
        "unwritable": "/proc/revbench-test/below",
        "a directory": str(tmp),
        "inside a run": str(run / "nested"),
    }


OUTPUT_CASES = [
    ("run --out", "empty"),
    ("run --out", "a file"),
    ("run --out", "under a file"),
    ("run --out", "unwritable"),
    ("run --out", "inside a run"),
    ("run --csv", "empty"),
    ("run --csv", "a directory"),
    ("run --csv", "under a file"),
    ("run --csv", "unwritable"),
    ("plot --out", "empty"),
    ("plot --out", "a file"),
    ("plot --out", "under a file"),
    ("plot --out", "unwritable"),
    ("gate --export-json", "empty"),
    ("gate --export-json", "a directory"),
    ("gate --export-json", "under a file"),
    ("gate --export-json", "unwritable"),
    ("gate --update", "empty"),
    ("gate --update", "under a file"),
    ("gate --update", "unwritable"),
]


@pytest.mark.parametrize(("option", "case"), OUTPUT_CASES)
def test_unusable_output_targets_are_refused_before_any_work(run_cli, tmp_path, option, case):
    target = _bad_targets(tmp_path)[case]
    good = tmp_path / "good"
    record = Record.for_cell(
        make_cell("test_tiny_cnn", resolution=32, batch_size=1, suite="s"),
        measurement=Measurement(peak_bytes=1024),
    )
    good.mkdir()
    (good / "results.jsonl").write_text(record.to_json() + "\n")
    suite = write_suite(tmp_path / "s.toml", ["test_tiny_cnn"])
    argv = {
        "run --out": ["run", "--suite", suite, "--device", "estimate", "--out", target],
        "run --csv": ["run", "--suite", suite, "--out", str(tmp_path / "r"), "--csv", target],
        "plot --out": ["plot", str(good), "--out", target],
        "gate --export-json": ["gate", "--baseline", str(good), "--current", str(good)]
        + ["--export-json", target],
        "gate --update": ["gate", "--baseline", target, "--current", str(good), "--update"],
    }[option]
    before = snapshot(tmp_path)
    err = one_line_exit_2(run_cli(*argv))
    flag = option.split()[1] if option != "gate --update" else "--baseline"
    assert flag in err or "--update" in err, err
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------- input, up front

SUITE_CASES = {
    # suite text -> what the one-line error must say
    "models = []": ("[[group]]\nmodels = []\n", "s.toml:2: group 1: models is empty"),
    "timeout_s = 'soon'": (
        '[defaults]\ntimeout_s = "soon"\n[[group]]\nmodels = ["test_tiny_cnn"]\n',
        "s.toml:2: defaults: timeout_s = 'soon' is invalid; it must be a finite number",
    ),
    "group = 5": ("group = 5\n", "s.toml:1: group must be an array of tables"),
    "not UTF-8": (b"[[group]]\nmodels = ['\xff']\n", "s.toml: not UTF-8 text"),
    "measure_steps = 0": (
        '[[group]]\nmodels = ["test_tiny_cnn"]\nmeasure_steps = 0\n',
        "s.toml:3: group 1: measure_steps = 0 is invalid; it must be an integer >= 1",
    ),
    "warmup_steps = -1": (
        '[[group]]\nmodels = ["test_tiny_cnn"]\nwarmup_steps = -1\n',
        "warmup_steps = -1 is invalid; it must be an integer >= 0",
    ),
    "timeout_s = 0": ('[[group]]\nmodels = ["test_tiny_cnn"]\ntimeout_s = 0\n', "timeout_s = 0"),
    "timeout_s = nan": (
        '[[group]]\nmodels = ["test_tiny_cnn"]\ntimeout_s = nan\n',
        "timeout_s = nan is invalid",
    ),
    "batch too large": (
        '[[group]]\nmodels = ["test_tiny_cnn"]\nbatch_sizes = [2147483648]\n',
        "s.toml:3: group 1: batch_sizes holds 2147483648; each must be an integer in 1..",
    ),
    "side too large": (
        '[[group]]\nmodels = ["test_tiny_cnn"]\nresolutions = [99999999999]\n',
        "resolutions holds 99999999999",
    ),
    "description = 5": (
        'description = 5\n[[group]]\nmodels = ["test_tiny_cnn"]\n',
        "s.toml:1: description must be a string",
    ),
    "empty override axis": (
        '[[group]]\nmodels = ["test_tiny_cnn"]\noverrides = { width = [] }\n',
        "s.toml:3: group 1: overrides: width is empty",
    ),
    "override of the wrong type": (
        '[[group]]\nmodels = ["test_tiny_cnn"]\nresolutions = [32]\n'
        'overrides = { width = ["wide"] }\n',
        "test_tiny_cnn: override width='wide' is invalid: width takes an integer",
    ),
    "override too large": (
        '[[group]]\nmodels = ["test_tiny_cnn"]\nresolutions = [32]\n'
        "overrides = { width = [1099511627776] }\n",
        "too large for a tensor dimension",
    ),
}


@pytest.mark.parametrize("case", SUITE_CASES)
def test_bad_suite_files_are_one_line_naming_file_and_key(run_cli, tmp_path, case):
    text, message = SUITE_CASES[case]
    path = tmp_path / "s.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / "out"
    err = one_line_exit_2(run_cli("run", "--suite", str(path), "--out", str(out)))
    assert message in err
    assert not out.exists()


CLI_CASES = {
    "--models ''": (["--models", ""], "argument --models: '' names nothing"),
    "--batch-sizes ''": (["--batch-sizes", ""], "argument --batch-sizes: '' names nothing"),
    "--modes ','": (["--modes", ","], "argument --modes: ',' names nothing"),
    "--resolutions ''": (["--resolutions", ""], "argument --resolutions: '' names nothing"),
    "--precision ' '": (["--precision", " "], "argument --precision: ' ' names nothing"),
    "--batch-sizes too large": (["--batch-sizes", "99999999999"], "batch size 99999999999"),
    "--resolutions too large": (["--resolutions", "99999999999"], "resolution '99999999999'"),
}


@pytest.mark.parametrize("case", CLI_CASES)
def test_empty_or_oversized_axes_are_errors(run_cli, tmp_path, case):
    argv, message = CLI_CASES[case]
    suite = write_suite(tmp_path / "s.toml", ["test_tiny_cnn"])
    out = tmp_path / "out"
    err = one_line_exit_2(run_cli("run", "--suite", suite, "--out", str(out), *argv))
    assert message in err
    assert not out.exists()


def test_list_filters_that_match_nothing_known_are_errors(run_cli):
    err = one_line_exit_2(run_cli("list", "--kind", "nonsense"))
    assert "invalid choice: 'nonsense'" in err and "reversible" in err
    err = one_line_exit_2(run_cli("list", "--family", "Nonsense"))
    assert "family 'Nonsense' is invalid; valid: " in err and "RevViT" in err


PLUGIN_CASES = {
    "missing": ("plugin_missing", "plugin 'plugin_missing' cannot be found (ModuleNotFoundError"),
    "raising": ("plugin_raises", "plugin 'plugin_raises' failed on import (ImportError: needs a"),
    "duplicate": (
        "plugin_duplicate",
        "plugin 'plugin_duplicate' failed on import (ValueError: model 'resnet50' is registered "
        "twice)",
    ),
}


@pytest.mark.parametrize("case", PLUGIN_CASES)
def test_bad_plugins_are_one_line_naming_plugin_and_cause(tmp_path, monkeypatch, case):
    from revbench.models import _load_plugins, get_info

    (tmp_path / "plugin_raises.py").write_text("raise ImportError('needs a GPU driver')\n")
    (tmp_path / "plugin_duplicate.py").write_text(
        "from revbench.models import get_info, register_model\n"
        "info = get_info('resnet50')\n"
        "register_model('resnet50', info.config, family='X', size='X', builder=info.builder)\n"
    )
    module, message = PLUGIN_CASES[case]
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("REVBENCH_PLUGINS", module)
    with pytest.raises(UsageError) as err:
        _load_plugins()
    assert str(err.value).startswith(f"REVBENCH_PLUGINS: {message}")
    assert "\n" not in str(err.value)
    assert get_info("resnet50").family == "ResNet"  # the registry is untouched


def test_a_bad_plugin_stops_any_command_with_exit_2():
    # End to end, once: a fresh process imports the registry, fails on the plugin, one line.
    proc = subprocess.run(
        [sys.executable, "-m", "revbench", "list"],
        env={**os.environ, "REVBENCH_PLUGINS": "plugin_missing"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (
        "revbench: error: REVBENCH_PLUGINS: plugin 'plugin_missing' cannot be found "
        "(ModuleNotFoundError: No module named 'plugin_missing')\n"
    )


# ------------------------------------------------------------------------------- gate

SUITE = "gate-faults"


def _row(batch: int = 1, method: str = "estimate", **figures) -> dict:
    cell = make_cell("test_tiny_cnn", resolution=32, batch_size=batch, suite=SUITE, method=method)
    measured = {"peak_bytes": 1_000_000 * batch, **figures}
    counts = Counts(params=906)
    record = Record.for_cell(cell, counts=counts, measurement=Measurement(**measured))
    return json.loads(record.to_json())


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # json writes NaN as NaN
    return str(path)


GATE_CASES = {
    # case -> (baseline rows, current rows, what the error names)
    "NaN in the baseline": (
        [_row(1, peak_bytes=math.nan)],
        [_row(1, peak_bytes=10_000_000)],  # a 10x regression NaN would have let through
        "baseline: results file {b}:1: test_tiny_cnn vanilla 32px b1 fp32 train (estimate): "
        "peak_bytes is nan",
    ),
    "Infinity in the current": (
        [_row(1)],
        [_row(1, peak_bytes=math.inf)],
        "current: results file {c}:1: test_tiny_cnn vanilla 32px b1",
    ),
    "a negative peak": ([_row(1)], [_row(1, peak_bytes=-5)], "peak_bytes is -5"),
    "a string figure": ([_row(1)], [_row(1) | {"params": "906"}], "params is '906'"),
    "another method": (
        [_row(1)],
        [_row(1, method="cpu", peak_bytes=None)],
        "baseline is method estimate but current is method cpu",
    ),
    "another optimizer": (
        [_row(1)],
        [_row(1) | {"optimizer": "adamw"}],
        "baseline and current have no cell in common",
    ),
    "other step counts": (
        [_row(1, method="cpu", peak_bytes=None, step_time_ms_median=5.0)],
        [_row(1, method="cpu", peak_bytes=None, step_time_ms_median=5.0) | {"measure_steps": 50}],
        "is timed over measure_steps 50 but its baseline over 10",
    ),
}


@pytest.mark.parametrize("case", GATE_CASES)
def test_the_gate_refuses_what_it_cannot_judge(run_cli, tmp_path, case):
    base_rows, cur_rows, message = GATE_CASES[case]
    b = _write(tmp_path / "baseline.jsonl", base_rows)
    c = _write(tmp_path / "current.jsonl", cur_rows)
    err = one_line_exit_2(run_cli("gate", "--baseline", b, "--current", c))
    assert message.format(b=b, c=c) in err


def test_an_internal_error_in_the_gate_is_not_exit_1(run_cli, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr("revbench.gate.compare", broken)
    path = _write(tmp_path / "r.jsonl", [_row(1)])
    code, _, err = run_cli("gate", "--baseline", path, "--current", path)
    assert code == 3
    assert err.splitlines()[-1] == "revbench: internal error: KeyError: 'a bug'"


# ------------------------------------------------------------- the machine refuses writes


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 24 kB tmpfs mounted in the test's folder (root on Linux only), unmounted after."""
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()[:100]}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_is_one_line_exit_4_and_keeps_finished_rows(run_cli, small_tmpfs, tmp_path):
    # Rows of about 2 kB each: the 24 kB disk fills before the last cells.
    suite = write_suite(tmp_path / "many.toml", ["test_tiny_cnn"], batch_sizes=list(range(1, 41)))
    code, _, err = run_cli(
        "run", "--suite", suite, "--device", "estimate", "--no-thop", "--jobs", "1",
        "--out", str(small_tmpfs),
    )  # fmt: skip
    assert code == 4, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("revbench: error: ") and "No space left on device" in last
    assert str(small_tmpfs) in last and "Traceback" not in err
    (run_dir,) = [p for p in small_tmpfs.glob("*/*") if p.is_dir()]
    rows = RunStore(run_dir).rows()  # every whole line is a valid record
    assert 0 < len(rows) < 40


def test_a_read_only_run_directory_is_one_line_exit_4(run_cli, small_tmpfs, tmp_path):
    suite = write_suite(tmp_path / "two.toml", ["test_tiny_cnn"], batch_sizes=[1])
    argv = ("run", "--suite", suite, "--device", "estimate", "--no-thop", "--out",
            str(small_tmpfs))  # fmt: skip
    assert run_cli(*argv)[0] == 0
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    code, _, err = run_cli(*argv, "--resume")
    assert code == 4, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Read-only file system" in lines[0], err


def test_plot_on_a_full_disk_is_exit_4_and_leaves_nothing_partial(
    run_cli, small_tmpfs, measured_run
):
    _, run_dir = measured_run
    out = small_tmpfs / "report"
    code, _, err = run_cli("plot", str(run_dir), "--out", str(out))
    assert code == 4, err
    assert err.strip().splitlines()[-1].startswith("revbench: error: ")
    assert "No space left on device" in err and "Traceback" not in err
    assert list(small_tmpfs.iterdir()) == []  # no report/, no partial folder beside it


def _processes_with(marker: str) -> list[int]:
    """Pids of live processes whose environment holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes() and not _dead(int(entry.name)):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_a_run_takes_its_ddp_ranks_too(tmp_path):
    # A ddp-2 cell whose ranks hang: SIGKILL the run while they are alive; its worker, both
    # ranks and everything they started are gone seconds later, and no rendezvous or result
    # files are left behind.
    suite = write_suite(tmp_path / "ddp.toml", ["test_hangs"], batch_sizes=[1])
    marker = f"REVBENCH_TEST_RUN={tmp_path.name}"
    env = {
        **os.environ,
        "REVBENCH_PLUGINS": f"{os.environ['REVBENCH_PLUGINS']},{FAULTS}",
        "REVBENCH_TEST_RUN": tmp_path.name,
        "TMPDIR": str(tmp_path),
    }
    run = subprocess.Popen(
        [sys.executable, "-m", "revbench.cli", "run", "--suite", suite, "--device", "cpu",
         "--no-thop", "--scenario", "ddp", "--world-size", "2", "--out", str(tmp_path / "o")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while len(_processes_with(marker)) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)  # the run, its worker and two ranks
    assert len(_processes_with(marker)) >= 4
    run.send_signal(signal.SIGKILL)
    run.wait()
    deadline = time.monotonic() + 15
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_with(marker) == []
    assert not list(tmp_path.glob("revbench-ddp-*"))
