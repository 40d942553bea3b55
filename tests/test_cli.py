"""The `revbench` command line end to end: run, list, bad input, OOM rows, --resume; startup
cost, help, tables at 80 columns, progress."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest
import torch
from revbench_launch_helpers import run_dirs
from rich.console import Console

import revbench
from revbench import launcher
from revbench.catalog import SuiteCells, estimate_time, measured_minutes, suite_cells
from revbench.cli import MODULE_COMMANDS, build_parser
from revbench.eta import suite_seconds
from revbench.loading import load
from revbench.outcome import Outcome
from revbench.suite import builtin_suites, expand, load_suite

TINY_SUITE = """
description = "tiny"
[defaults]
batch_sizes = [1, 2]
warmup_steps = 1
measure_steps = 2
[[group]]
name = "probe"
models = ["test_oom_probe", "test_tiny_cnn"]
resolutions = [32]
"""


@pytest.fixture
def tiny_suite(suite_file):
    return suite_file(TINY_SUITE, "tiny")


_runs = run_dirs


def test_smoke_end_to_end(run_cli, tmp_path):
    # Every family through the CLI, the runner and a real step. The estimator's side is
    # the tiny suite below and the ci gate; each family's estimate, its own tests.
    out = tmp_path / "results"
    # Two workers, one core each (the machine's cores shared out): the cpu method's figures
    # are per cell, and the test takes half the time on CI's 2 cores.
    code, _, err = run_cli(
        "run", "--suite", "smoke", "--device", "cpu", "--out", str(out), "--no-thop",
        "--jobs", "2",
    )  # fmt: skip
    assert code == 0, err
    (run_dir,) = _runs(out)
    df = load(run_dir)
    assert set(df["status"]) == {"ok"}
    assert set(df["method"]) == {"cpu"}
    assert {"resnet50", "vit_small_patch16_224", "revvit_small", "revbifpn_s0"} <= set(df["model"])
    # a reversible model runs in each of the suite's modes, on the same cell otherwise
    assert {"reversible", "vanilla"} <= set(df[df["kind"] == "reversible"]["mode"])
    assert df["params"].notna().all() and df["macs"].notna().all()
    assert (df["step_time_ms_median"] > 0).all() and (df["throughput_samples_per_s"] > 0).all()
    manifest = (run_dir / "manifest.json").read_text()
    assert '"torch"' in manifest and "--suite smoke" in manifest


def test_auto_device_falls_back_to_the_estimator_and_says_so(run_cli, tmp_path, tiny_suite):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, _, err = run_cli(
        "run",
        "--suite",
        tiny_suite,
        "--out",
        str(tmp_path),
        "--models",
        "test_tiny_cnn",
        "--no-thop",
    )
    assert code == 0
    assert "no CUDA GPU found: using the GPU-free estimator" in err
    df = load(tmp_path)
    assert set(df["method"]) == {"estimate"} and set(df["status"]) == {"ok"}
    assert (df["peak_bytes"] > 0).all() and (df["mem_activations_bytes"] > 0).all()
    assert "memory per sample" in err  # the fit over batch sizes 1 and 2


def test_oom_cell_is_recorded_and_the_next_cell_still_runs(run_cli, tmp_path, tiny_suite):
    code, _, err = run_cli(
        "run", "--suite", tiny_suite, "--device", "cpu", "--out", str(tmp_path), "--no-thop"
    )
    assert code == 0, err
    df = load(tmp_path).set_index(["model", "batch_size"])
    assert df.loc[("test_oom_probe", 1), "status"] == "ok"
    assert df.loc[("test_oom_probe", 2), "status"] == "oom"
    assert df.loc[("test_oom_probe", 2), "message"].startswith("OutOfMemoryError")
    # the cells after the OOM ran, at the batch size they asked for
    assert (df.loc["test_tiny_cnn", "status"] == "ok").all()


def test_every_method_isolates_cells_unless_no_isolate(run_cli, tmp_path, tiny_suite, monkeypatch):
    # The workers themselves are tested in test_faults; here only which launcher runs.
    launched = []

    def fake(where):
        def launch(self, request, slot=0):
            launched.append((where, request.cell.method))
            return Outcome("ok")

        return launch

    monkeypatch.setattr(launcher.PoolLauncher, "launch", fake("worker"))
    monkeypatch.setattr(launcher.InlineLauncher, "launch", fake("inline"))
    for device in ("cpu", "estimate"):
        args = ("run", "--suite", tiny_suite, "--device", device, "--no-thop")
        assert run_cli(*args, "--out", str(tmp_path / device))[0] == 0
    assert launched == [("worker", "cpu")] * 4 + [("worker", "estimate")] * 4
    launched.clear()
    args = ("run", "--suite", tiny_suite, "--device", "cpu", "--no-thop", "--no-isolate")
    assert run_cli(*args, "--out", str(tmp_path / "inline"))[0] == 0
    assert launched == [("inline", "cpu")] * 4


def test_interrupted_run_loses_no_row_and_resumes(run_cli, tmp_path, tiny_suite, monkeypatch):
    real = launcher.PoolLauncher.launch
    calls = []

    def interrupt_third(self, request, slot=0):
        calls.append(request.cell.label())
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, request, slot)

    monkeypatch.setattr(launcher.PoolLauncher, "launch", interrupt_third)
    code, _, err = run_cli(
        "run", "--suite", tiny_suite, "--device", "cpu", "--out", str(tmp_path), "--no-thop"
    )
    assert code == 130 and "continue with --resume" in err
    (run_dir,) = _runs(tmp_path)
    assert len(load(run_dir)) == 2  # both finished cells were flushed

    monkeypatch.setattr(launcher.PoolLauncher, "launch", real)
    code, _, err = run_cli(
        "run",
        "--suite",
        tiny_suite,
        "--device",
        "cpu",
        "--out",
        str(tmp_path),
        "--resume",
        "--no-thop",
    )
    assert code == 0, err
    assert "2 cell(s) already measured, 2 to go" in err
    assert _runs(tmp_path) == [run_dir]  # the same run directory
    df = load(run_dir, latest_only=False)
    assert len(df) == 4 and not df.duplicated(["model", "batch_size"]).any()
    manifest = (run_dir / "manifest.json").read_text()
    assert manifest.count('"started_at"') == 2  # both invocations recorded


def test_resume_reruns_failed_cells_but_not_measured_ones(run_cli, tmp_path, tiny_suite):
    args = ("run", "--suite", tiny_suite, "--device", "cpu", "--out", str(tmp_path), "--no-thop")
    assert run_cli(*args)[0] == 0
    (run_dir,) = _runs(tmp_path)
    # turn one measured row into an error row, as a crashed cell would leave it
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    lines[-1] = lines[-1].replace('"status": "ok"', '"status": "error"')
    (run_dir / "results.jsonl").write_text("\n".join(lines) + "\n")
    code, _, err = run_cli(*args, "--resume", str(run_dir))
    assert code == 0 and "3 cell(s) already measured, 1 to go" in err
    assert set(load(run_dir)["status"]) == {"ok", "oom"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--suite", "nope"], "unknown suite 'nope'; valid: "),
        (["--suite", "smoke", "--models", "resnet5"], "unknown model 'resnet5'; valid: "),
        (
            ["--suite", "smoke", "--precision", "fp8"],
            "precision 'fp8' is invalid; valid: fp32, amp-bf16, amp-fp16",
        ),
        (
            ["--suite", "smoke", "--device", "tpu"],
            "device 'tpu' is invalid; valid: auto, cuda, estimate, cpu",
        ),
        (["--suite", "smoke", "--modes", "fast"], "mode 'fast' is invalid; valid: "),
        (
            ["--suite", "smoke", "--resolutions", "230"],
            "vit_small_patch16_224: img_size 230 is invalid",
        ),
        (
            ["--suite", "smoke", "--batch-sizes", "two"],
            "'two' is not a comma-separated list of integers",
        ),
        (["--suite", "smoke", "--resume"], "nothing to resume at "),
        (["--suite", "smoke", "--bogus"], "unrecognized arguments: --bogus"),
        (["--suit", "smoke"], "required: --suite"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(run_cli, tmp_path, argv, message):
    out = tmp_path / "results"
    code, stdout, err = run_cli("run", *argv, "--out", str(out))
    assert code == 2
    assert message in err
    assert err.strip().count("\n") == 0, err
    assert not out.exists()


def test_malformed_suite_file_names_file_and_line(run_cli, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[group]]\nmodels = ["resnet50"]\nbatchsizes = [1]\n')
    code, _, err = run_cli("run", "--suite", str(bad), "--out", str(tmp_path / "r"))
    assert code == 2 and f"{bad}:3: unknown key 'batchsizes'" in err
    assert not (tmp_path / "r").exists()


def test_cuda_device_without_gpu_is_a_usage_error(run_cli, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, _, err = run_cli(
        "run", "--suite", "smoke", "--device", "cuda", "--out", str(tmp_path / "r")
    )
    assert code == 2 and "no CUDA GPU is visible; valid: estimate, cpu" in err
    assert not (tmp_path / "r").exists()


def test_list_prints_the_registry(run_cli):
    code, out, _ = run_cli("list")
    assert code == 0
    for name in ("tf_efficientnet_b7", "hrnet_w64", "vit_large_patch16_224", "resnet101"):
        assert name in out
    code, out, _ = run_cli("list", "--suites")
    assert {"smoke", "imagenet-train-mem"} <= set(out.split())


def test_dry_run_lists_cells(run_cli):
    code, out, _ = run_cli(
        "run", "--suite", "imagenet-train-mem", "--device", "estimate", "--dry-run"
    )
    assert code == 0 and "tf_efficientnet_b7" in out and "600px" in out


def test_python_dash_m_works():
    proc = subprocess.run(
        [sys.executable, "-m", "revbench", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    commands = proc.stdout.split("{", 1)[1].split("}", 1)[0].split(",")
    assert {"run", "list", "plot", "gate"} <= set(commands)


def test_the_command_ends_after_its_exit_handlers_with_its_output_whole(tmp_path):
    # `entry` ends the process without the interpreter's teardown: what the exit handlers
    # do (a pool's workers killed, logs flushed) still happens, and a pipe gets every line.
    (tmp_path / "plugin_at_exit.py").write_text(
        "import atexit, pathlib\n"
        f"atexit.register(pathlib.Path({str(tmp_path / 'ran')!r}).write_text, 'ran')\n"
    )
    env = {
        **os.environ,
        "REVBENCH_PLUGINS": "plugin_at_exit",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "revbench", "list"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("\n") and "revcol_large" in proc.stdout
    assert (tmp_path / "ran").read_text() == "ran"
    bad = subprocess.run(
        [sys.executable, "-m", "revbench", "list", "--bad-flag"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2


def test_ctrl_c_before_a_command_handles_it_is_one_line_and_130(run_cli, monkeypatch):
    # Ctrl-C while a command still imports torch: the documented 130, not a traceback
    from revbench import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_list", interrupted)
    code, out, err = run_cli("list")
    assert (code, out, err) == (130, "", "revbench: interrupted\n")


def test_csv_export_from_the_cli(run_cli, tmp_path, tiny_suite):
    csv = tmp_path / "r.csv"
    code, _, _ = run_cli(
        "run",
        "--suite",
        tiny_suite,
        "--device",
        "estimate",
        "--out",
        str(tmp_path),
        "--csv",
        str(csv),
        "--models",
        "test_tiny_cnn",
        "--no-thop",
    )
    assert code == 0 and csv.read_text().startswith("model,")


# ------------------------------------------------------------------ startup, help, list

HEAVY = ("torch", "timm", "pandas", "matplotlib")


def _imports_of(argv: list[str]) -> tuple[int, str, list[str]]:
    """Run `revbench *argv` in a fresh interpreter: exit code, stdout, and which heavy
    modules it imported (without the tests' plugin, whose networks load torch)."""
    probe = (
        "import sys\n"
        "from revbench.cli import main\n"
        "try:\n"
        f"    code = main({argv!r})\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('EXIT', code, 'HEAVY', ','.join(heavy), file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80", "REVBENCH_PLUGINS": ""},
    )
    last = proc.stderr.strip().splitlines()[-1].split()
    assert last[0] == "EXIT", proc.stderr
    heavy = last[3].split(",") if len(last) > 3 else []
    return int(last[1]), proc.stdout, heavy


@pytest.mark.parametrize("argv", [["--help"], [], ["--version"], ["list", "--suites"]])
def test_help_version_and_suites_import_no_torch(argv):
    code, _, heavy = _imports_of(argv)
    assert code == 0
    assert heavy == []


def test_bare_revbench_prints_usage_and_the_commands():
    code, out, _ = _imports_of([])
    assert code == 0 and out.startswith("usage: revbench")
    for command, _help in _command_help(build_parser(load="all")).items():
        assert command in out


def test_version_is_the_package_version():
    code, out, _ = _imports_of(["--version"])
    assert code == 0 and out.strip() == f"revbench {revbench.__version__}"


def _command_help(parser) -> dict[str, str]:
    (subparsers,) = (a for a in parser._actions if a.dest == "command")
    return {a.dest: a.help for a in subparsers._choices_actions}


def test_commands_listed_without_import_have_their_own_help_line():
    # `revbench --help` lists plot, gate and max-batch without importing them: the help
    # line it shows is the one each module registers.
    for name, (_module, help_line) in MODULE_COMMANDS.items():
        assert _command_help(build_parser(load=name))[name] == help_line


def test_suite_cells_are_the_suites_expansion_and_their_timed_runs():
    assert set(measured_minutes()) <= set(builtin_suites())  # no row of a suite gone
    counts = suite_cells(load_suite("coco-det-mem"))  # torchvision's detectors: dense cells only
    cells = expand(load_suite("coco-det-mem"), method="estimate")
    assert counts.cells == counts.dense_cells == len(cells) > 0
    assert counts.cost_seconds == 0 and counts.measured_minutes is None
    counts = suite_cells(load_suite("imagenet-train-mem"))
    assert counts.measured_minutes == measured_minutes()["imagenet-train-mem"]
    # the cost model a run's time left uses, so `list --suites` and the run agree
    cells = expand(load_suite("imagenet-train-mem"), method="estimate")
    assert counts.cost_seconds == round(suite_seconds(cells)) > 0


def test_list_suites_shows_description_cells_and_time(run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli("list", "--suites")
    assert code == 0
    (row,) = (line for line in out.splitlines() if line.startswith("imagenet-train-mem "))
    cells = len(expand(load_suite("imagenet-train-mem"), method="estimate"))
    assert f" {cells} " in row and "min" in row and "ImageNet training memory" in row


def test_estimated_time_is_rounded_to_what_the_model_knows():
    assert estimate_time(SuiteCells(cells=1, dense_cells=0, cost_seconds=5)) == "<1 min"
    hundred = estimate_time(SuiteCells(cells=100, dense_cells=0, cost_seconds=600))
    assert hundred == "~5 min"  # 600 worker-seconds over the timed run's two workers
    low, high = estimate_time(SuiteCells(cells=4, dense_cells=4)).split(" ")[0].split("-")
    assert int(low) < int(high)
    # a timed run's wall time wins over the model, rounded the same way
    assert estimate_time(SuiteCells(cells=100, dense_cells=0, measured_minutes=47.0)) == "~45 min"
    assert estimate_time(SuiteCells(cells=10, dense_cells=0, measured_minutes=1.4)) == "~1 min"
    # Halves round up: a run timed at 4.5 minutes reads "~5 min" (round() would give 4).
    assert estimate_time(SuiteCells(cells=10, dense_cells=0, measured_minutes=4.5)) == "~5 min"


# ------------------------------------------------------------ tables, progress, resume


def test_tables_fit_an_80_column_terminal(run_cli, tmp_path, tiny_suite, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, _, err = run_cli(
        "run", "--suite", tiny_suite, "--device", "estimate", "--out", str(tmp_path), "--no-thop"
    )
    assert code == 0, err
    table = err[err.index("revbench results") : err.index("results: ")]
    assert max(len(line) for line in table.splitlines()) <= 80
    # The estimator times no step: those columns are left out, and the caption says so.
    assert "ms/step" not in table.splitlines()[1]
    assert "no ms/step, img/s: empty on every row" in " ".join(table.split())
    assert "test_tiny_cnn" in table and "…" not in table  # no label cut short
    code, out, _ = run_cli("list")
    assert code == 0 and max(len(line) for line in out.splitlines()) <= 80
    assert "tf_efficientnet_b7" in out and "…" not in out
    code, out, _ = run_cli("list", "--suites")
    assert code == 0 and max(len(line) for line in out.splitlines()) <= 80


def test_progress_off_a_terminal_is_one_line_per_cell(run_cli, tmp_path, tiny_suite):
    code, _, err = run_cli(
        "run", "--suite", tiny_suite, "--device", "cpu", "--out", str(tmp_path), "--no-thop"
    )
    assert code == 0, err
    lines = [line for line in err.splitlines() if re.match(r"\[\d/4 ", line)]
    assert [line[:5] for line in lines] == ["[1/4 ", "[2/4 ", "[3/4 ", "[4/4 "]
    assert all(" left] " in line and "(cpu)" in line for line in lines)
    assert "oom test_oom_probe" in lines[1]  # each cell's status on its line
    assert "4/4 cell(s) in " in err
    assert "\r" not in err and "\x1b" not in err  # nothing redrawn, no colour codes


def test_progress_on_a_terminal_draws_a_bar_and_keeps_the_cell_lines():
    from revbench.cell import Cell
    from revbench.progress import CellProgress
    from revbench.records import Record

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=80)
    cell = Cell(
        model="test_tiny_cnn", family="Test", kind="baseline", size="T", task="classify",
        resolution=32, batch_size=1, method="cpu",
    )  # fmt: skip
    with CellProgress(console, total=2, title="tiny") as progress:
        assert progress.live
        for _ in range(2):
            progress.start(cell)
            progress.done(Record.for_cell(cell, status="ok"))
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buffer.getvalue())
    assert text.count("ok test_tiny_cnn vanilla 32px b1 fp32 train (cpu)") == 2
    assert "2/2 cell(s) in " in text


def test_time_left_is_the_mean_pace_rounded():
    from revbench.progress import clock, time_left

    assert time_left(0.0, 0, 10) == "?"
    assert time_left(30.0, 1, 2) == "<1 min"
    assert time_left(120.0, 1, 3) == "~4 min"
    assert time_left(3600.0, 1, 4) == "~3.0 h"
    assert time_left(5.0, 4, 4) == "0s"
    assert clock(59) == "0:59" and clock(3723) == "1:02:03"


def test_resume_with_nothing_left_says_so_and_records_nothing(run_cli, tmp_path, tiny_suite):
    args = ("run", "--suite", tiny_suite, "--device", "cpu", "--out", str(tmp_path), "--no-thop")
    assert run_cli(*args)[0] == 0
    (run_dir,) = _runs(tmp_path)
    manifest = (run_dir / "manifest.json").read_text()
    results = (run_dir / "results.jsonl").read_text()
    code, _, err = run_cli(*args, "--resume")
    assert code == 0, err
    assert f"nothing to resume: all 4 cell(s) are in {run_dir}" in err
    assert "revbench results" not in err  # no table of nothing
    assert (run_dir / "manifest.json").read_text() == manifest  # no new invocation
    assert (run_dir / "results.jsonl").read_text() == results
    assert _runs(tmp_path) == [run_dir]
