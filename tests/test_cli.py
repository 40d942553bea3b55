"""The `revbench` command line end to end: run, list, bad input, OOM rows, --resume."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from revbench import launcher, runner
from revbench.launcher import Outcome
from revbench.results import load

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
def tiny_suite(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SUITE)
    return str(path)


def _runs(out):
    return sorted(p for p in out.glob("*/*") if p.is_dir())


def test_smoke_end_to_end(run_cli, tmp_path):
    # Every family through the CLI, the runner and a real step. The estimator's side is
    # the tiny suite below and the ci gate; each family's estimate, its own tests.
    out = tmp_path / "results"
    code, _, err = run_cli(
        "run", "--suite", "smoke", "--device", "cpu", "--out", str(out), "--no-thop"
    )
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
        def launch(cell, snapshot=None, **kwargs):
            launched.append((where, cell.method))
            return Outcome("ok")

        return launch

    monkeypatch.setattr(runner, "run_isolated", fake("worker"))
    monkeypatch.setattr(runner, "run_inline", fake("inline"))
    for device in ("cpu", "estimate"):
        args = ("run", "--suite", tiny_suite, "--device", device, "--no-thop")
        assert run_cli(*args, "--out", str(tmp_path / device))[0] == 0
    assert launched == [("worker", "cpu")] * 4 + [("worker", "estimate")] * 4
    launched.clear()
    args = ("run", "--suite", tiny_suite, "--device", "cpu", "--no-thop", "--no-isolate")
    assert run_cli(*args, "--out", str(tmp_path / "inline"))[0] == 0
    assert launched == [("inline", "cpu")] * 4


def test_interrupted_run_loses_no_row_and_resumes(run_cli, tmp_path, tiny_suite, monkeypatch):
    real = launcher.run_isolated
    calls = []

    def interrupt_third(cell, snapshot=None, **kwargs):
        calls.append(cell.label())
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(cell, snapshot, **kwargs)

    monkeypatch.setattr(runner, "run_isolated", interrupt_third)
    code, _, err = run_cli(
        "run", "--suite", tiny_suite, "--device", "cpu", "--out", str(tmp_path), "--no-thop"
    )
    assert code == 130 and "continue with --resume" in err
    (run_dir,) = _runs(tmp_path)
    assert len(load(run_dir)) == 2  # both finished cells were flushed

    monkeypatch.setattr(runner, "run_isolated", real)
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
