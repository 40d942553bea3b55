"""`revbench gate`: exact gating of estimates, tolerances for measurements, bad input, update."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from revbench import cli
from revbench.cell import KEY_FIELDS
from revbench.loading import load
from revbench.measurement import Counts, Measurement
from revbench.models import list_models
from revbench.records import Record
from revbench.store import RunStore
from revbench.suite import expand, load_suite, make_cell

SUITE = "gate-test"
REPO = Path(__file__).resolve().parents[1]

# An estimated peak at batch b: fixed bytes plus a per-sample slope, in 512-byte blocks.
FIXED, PER_SAMPLE = 1_048_576, 65_536


def _record(cell, status: str = "ok", **figures) -> Record:
    counts = {k: figures.pop(k) for k in ("params", "macs") if k in figures}
    return Record.for_cell(
        cell, status=status, counts=Counts(**counts), measurement=Measurement(**figures)
    )


def estimate_record(batch: int, model: str = "test_tiny_cnn", resolution: int = 32, **values):
    cell = make_cell(model, resolution=resolution, batch_size=batch, suite=SUITE)
    figures = dict(
        params=1_234,
        macs=56_789,
        peak_bytes=FIXED + PER_SAMPLE * batch,
        mem_parameters_bytes=FIXED // 2,
        mem_activations_bytes=PER_SAMPLE * batch,
        mem_optimizer_state_bytes=FIXED // 2,
    )
    return _record(cell, **{**figures, **values})


def cuda_record(batch: int = 8, **values):
    cell = make_cell("test_tiny_cnn", resolution=32, batch_size=batch, method="cuda", suite=SUITE)
    figures = dict(
        params=1_234,
        peak_bytes=100_000_000,
        peak_reserved_bytes=120_000_000,
        step_time_ms_median=50.0,
        throughput_samples_per_s=160.0,
    )
    return _record(cell, **{**figures, **values})


def write_run(path: Path, records: list[Record]) -> str:
    store = RunStore(path)
    path.mkdir(parents=True)
    store.write_manifest({"suite": records[0].suite, "command": "revbench run (test)"})
    for record in records:
        store.append(record)
    return str(path)


@pytest.fixture
def baseline(tmp_path):
    return write_run(tmp_path / "baseline", [estimate_record(1), estimate_record(2)])


def gate(run_cli, baseline, current, *extra):
    return run_cli("gate", "--baseline", baseline, "--current", current, *extra)


def one_line_error(code, out, err) -> bool:
    lines = err.strip().splitlines()
    return code == 2 and len(lines) == 1 and lines[0].startswith("revbench: error:")


# --------------------------------------------------------------------------- verdicts


def test_unchanged_results_pass(run_cli, baseline, tmp_path):
    current = write_run(tmp_path / "current", [estimate_record(1), estimate_record(2)])
    code, out, _ = gate(run_cli, baseline, current)
    assert code == 0
    assert "gate passed" in out and "0 regression(s)" in out
    # Nothing is not ok: no table, only the verdict and how to see every metric.
    assert "peak_bytes" not in out and "--verbose lists all 13 compared metrics" in out
    code, out, _ = gate(run_cli, baseline, current, "--verbose")
    assert code == 0
    assert "bytes_per_sample" in out and "REGRESSION" not in out


def test_text_output_leads_with_the_verdict_and_what_is_not_ok(run_cli, baseline, tmp_path):
    grown = estimate_record(2, peak_bytes=FIXED + 2 * PER_SAMPLE + 1)
    current = write_run(tmp_path / "current", [estimate_record(1), grown])
    code, out, _ = gate(run_cli, baseline, current)
    assert code == 1
    lines = out.splitlines()
    assert lines[1].startswith("gate FAILED: 13 metric(s) in 2 cell(s) compared: 2 regression")
    # Only the two regressions are tabled: the b2 peak and the slope over b1,2.
    assert sum("REGRESSION" in line for line in lines) == 2
    assert not any("mem_parameters_bytes" in line for line in lines)


def test_one_more_estimated_byte_fails_and_names_the_cell(run_cli, baseline, tmp_path):
    grown = estimate_record(2, peak_bytes=FIXED + 2 * PER_SAMPLE + 1)
    current = write_run(tmp_path / "current", [estimate_record(1), grown])
    code, out, _ = gate(run_cli, baseline, current)
    assert code == 1
    assert "gate FAILED" in out
    regressions = [line for line in out.splitlines() if "REGRESSION" in line]
    # The cell's peak and its group's memory per sample (the slope grew by the byte too).
    assert any("test_tiny_cnn vanilla 32px b2" in r and "peak_bytes" in r for r in regressions)
    assert any("b1,2" in r and "bytes_per_sample" in r for r in regressions)
    assert any("+1" in r for r in regressions)


def test_every_breakdown_category_is_gated_exactly(run_cli, baseline, tmp_path):
    moved = estimate_record(1, mem_activations_bytes=PER_SAMPLE + 512)
    current = write_run(tmp_path / "current", [moved, estimate_record(2)])
    code, out, _ = gate(run_cli, baseline, current)
    assert code == 1
    assert any("mem_activations_bytes" in r for r in out.splitlines() if "REGRESSION" in r)


@pytest.mark.parametrize(
    "field, factor, expected_code, verdict",
    [
        ("peak_bytes", 1.04, 0, "ok"),  # measured memory: 5 %
        ("peak_bytes", 1.06, 1, "REGRESSION"),
        ("peak_reserved_bytes", 1.06, 1, "REGRESSION"),
        ("step_time_ms_median", 1.09, 0, "ok"),  # time: 10 %
        ("step_time_ms_median", 1.11, 1, "REGRESSION"),
        ("throughput_samples_per_s", 0.95, 0, "ok"),
        ("throughput_samples_per_s", 0.85, 1, "REGRESSION"),  # higher is better: a drop
        ("throughput_samples_per_s", 1.20, 0, "improved"),
        ("step_time_ms_median", 0.80, 0, "improved"),
    ],
)
def test_measured_metrics_carry_tolerances(
    run_cli, tmp_path, field, factor, expected_code, verdict
):
    base = cuda_record()
    moved = cuda_record(**{field: getattr(base, field) * factor})
    baseline = write_run(tmp_path / "baseline", [base])
    current = write_run(tmp_path / "current", [moved])
    code, out, _ = gate(run_cli, baseline, current, "--verbose")
    assert code == expected_code, out
    (row,) = [line for line in out.splitlines() if f" {field} " in line and "cuda" in line][:1]
    assert row.rstrip(" │").endswith(verdict)


def test_tolerance_override(run_cli, baseline, tmp_path):
    base = cuda_record()
    moved = cuda_record(peak_bytes=base.peak_bytes * 1.03)
    cuda_base = write_run(tmp_path / "cuda-base", [base])
    cuda_cur = write_run(tmp_path / "cuda-cur", [moved])
    assert gate(run_cli, cuda_base, cuda_cur)[0] == 0
    assert gate(run_cli, cuda_base, cuda_cur, "--tolerance", "peak_bytes=2")[0] == 1
    # An explicit tolerance applies to estimates too, which are otherwise exact.
    grown = estimate_record(1, peak_bytes=FIXED + PER_SAMPLE + 512)
    current = write_run(tmp_path / "current", [grown, estimate_record(2)])
    assert gate(run_cli, baseline, current)[0] == 1
    code, out, _ = gate(
        run_cli, baseline, current, "--tolerance", "peak_bytes=1,bytes_per_sample=1"
    )
    assert code == 0, out


def test_improvements_are_reported_with_a_refresh_hint(run_cli, baseline, tmp_path):
    shrunk = estimate_record(2, peak_bytes=FIXED + 2 * PER_SAMPLE - 512)
    current = write_run(tmp_path / "current", [estimate_record(1), shrunk])
    code, out, _ = gate(run_cli, baseline, current)
    assert code == 0
    # The b2 peak and the slope over batch size both fell by the block.
    improved = [line for line in out.splitlines() if "improved" in line]
    assert any("peak_bytes" in r and "-512" in r for r in improved)
    assert any("bytes_per_sample" in r and "-512" in r for r in improved)
    assert "2 improvement(s)" in out and "--update" in out


def test_cells_on_one_side_only_are_listed(run_cli, baseline, tmp_path):
    # A new cell passes (with a hint); a baseline cell missing from the current run fails.
    extra = estimate_record(1, resolution=64)
    variant = Record.for_cell(
        make_cell("test_tiny_cnn", resolution=32, batch_size=1, suite=SUITE, overrides={"width": 4})
    )
    records = [estimate_record(1), estimate_record(2), extra, variant]
    current = write_run(tmp_path / "more", records)
    code, out, _ = gate(run_cli, baseline, current)
    assert code == 0
    assert "test_tiny_cnn vanilla 64px b1" in out and "current only: new" in out
    assert "test_tiny_cnn[width=4] vanilla 32px b1" in out  # not eaten as rich markup
    current = write_run(tmp_path / "fewer", [estimate_record(1)])
    code, out, _ = gate(run_cli, baseline, current)
    assert code == 1
    assert "test_tiny_cnn vanilla 32px b2" in out and "missing from current" in out


def test_a_worse_status_is_a_regression(run_cli, baseline, tmp_path):
    oom = estimate_record(2, status="oom", peak_bytes=None, mem_activations_bytes=None)
    current = write_run(tmp_path / "oom", [estimate_record(1), oom])
    code, out, _ = gate(run_cli, baseline, current)
    assert code == 1
    assert any(" status " in r and "ok" in r and "oom" in r for r in out.splitlines())
    # ...and back again is an improvement.
    code, out, _ = gate(run_cli, current, baseline)
    assert code == 0 and "improved" in out


def test_markdown_format(run_cli, baseline, tmp_path):
    grown = estimate_record(1, peak_bytes=FIXED + PER_SAMPLE + 512)
    current = write_run(tmp_path / "current", [grown, estimate_record(2)])
    code, out, _ = gate(run_cli, baseline, current, "--format", "markdown")
    assert code == 1
    lines = out.splitlines()
    assert (
        "| cell | metric | baseline | current | change | change % | tolerance | verdict |" in lines
    )
    assert any(line.startswith("| ---") for line in lines)
    regression = next(line for line in lines if "**REGRESSION**" in line)
    assert "test_tiny_cnn vanilla 32px b1" in regression and "| +512 |" in regression
    assert "<details>" in out and "gate FAILED" in out


def test_export_json_for_github_action_benchmark(run_cli, baseline, tmp_path):
    path = tmp_path / "bench.json"
    cuda = write_run(tmp_path / "cuda", [cuda_record()])
    code, _, _ = gate(run_cli, cuda, cuda, "--export-json", str(path))
    assert code == 0
    entries = json.loads(path.read_text())
    assert all(set(e) == {"name", "unit", "value"} for e in entries)
    by_name = {e["name"]: e for e in entries}
    peak = by_name["test_tiny_cnn vanilla 32px b8 fp32 train (cuda) peak_bytes"]
    assert (peak["value"], peak["unit"]) == (100_000_000, "bytes")
    assert not any("throughput" in name for name in by_name)  # bigger-is-better: left out
    code, _, _ = gate(run_cli, baseline, baseline, "--export-json", str(path))
    by_name = {e["name"]: e["value"] for e in json.loads(path.read_text())}
    assert by_name["test_tiny_cnn vanilla 32px b1,2 fp32 train (estimate) bytes_per_sample"] == (
        PER_SAMPLE
    )


# -------------------------------------------------------------------------- bad input


def _schema_zero(tmp_path) -> str:
    path = tmp_path / "old.jsonl"
    row = json.loads(estimate_record(1).to_json())
    path.write_text(json.dumps({**row, "schema_version": 0}) + "\n")
    return str(path)


@pytest.mark.parametrize(
    "case",
    [
        "missing-baseline",
        "missing-current",
        "other-suite",
        "schema",
        "unknown-metric",
        "no-equals",
        "not-a-number",
        "negative",
        "format",
        "no-current",
        "jobs-without-suite",
    ],
)
def test_bad_input_is_one_line_and_exit_2(run_cli, baseline, tmp_path, case):
    current = baseline
    extra: list[str] = []
    if case == "missing-baseline":
        baseline = str(tmp_path / "nowhere")
    elif case == "missing-current":
        current = str(tmp_path / "nowhere")
    elif case == "other-suite":
        other = Record.for_cell(make_cell("test_tiny_cnn", resolution=32, batch_size=1, suite="x"))
        current = write_run(tmp_path / "other", [other])
    elif case == "schema":
        current = _schema_zero(tmp_path)
    elif case == "unknown-metric":
        extra = ["--tolerance", "peak_gigabytes=2"]
    elif case == "no-equals":
        extra = ["--tolerance", "peak_bytes"]
    elif case == "not-a-number":
        extra = ["--tolerance", "peak_bytes=two"]
    elif case == "negative":
        extra = ["--tolerance", "peak_bytes=-1"]
    elif case == "format":
        extra = ["--format", "html"]
    elif case == "jobs-without-suite":
        extra = ["--jobs", "2"]  # workers run a suite; gating stored results has none
    if case == "no-current":
        result = run_cli("gate", "--baseline", baseline)
    else:
        result = gate(run_cli, baseline, current, *extra)
    assert one_line_error(*result), result
    err = result[2]
    if case == "unknown-metric":
        assert "peak_gigabytes" in err and "step_time_ms_median" in err  # lists the valid names
    if case == "other-suite":
        assert "suite gate-test" in err and "suite x" in err
    if case == "schema":
        assert "schema version 0" in err


# ----------------------------------------------------------------------------- update


@pytest.mark.parametrize("target", ["run-dir", "jsonl-file"])
def test_update_rewrites_the_baseline(run_cli, baseline, tmp_path, target):
    grown = estimate_record(2, peak_bytes=FIXED + 2 * PER_SAMPLE + 512)
    current = write_run(tmp_path / "current", [estimate_record(1), grown])
    new = tmp_path / "ref" / ("ci" if target == "run-dir" else "ci.jsonl")
    code, _, err = gate(run_cli, str(new), current, "--update")
    assert code == 0 and "baseline updated" in err
    results = new / "results.jsonl" if target == "run-dir" else new
    manifest = json.loads((results.parent / "manifest.json").read_text())
    assert manifest["suite"] == SUITE and manifest["environment"]["torch"]
    assert "gate" in manifest["invocations"][-1]["command"]
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["peak_bytes"] for r in rows] == [FIXED + PER_SAMPLE, FIXED + 2 * PER_SAMPLE + 512]
    assert all(type(r["peak_bytes"]) is int and r["step_time_ms_median"] is None for r in rows)
    assert not list(results.parent.glob("*.tmp")) and not list(results.parent.glob(".*.tmp"))
    assert gate(run_cli, str(new), current)[0] == 0

    # Updating over an existing baseline prints what changed and accepts it.
    code, out, err = gate(run_cli, baseline, current, "--update")
    assert code == 0 and "REGRESSION" in out and "1 with changes" in err
    assert gate(run_cli, baseline, current)[0] == 0
    assert load(baseline)[list(KEY_FIELDS)].equals(load(current)[list(KEY_FIELDS)])


def test_update_replaces_a_baseline_of_an_old_schema(run_cli, baseline, tmp_path):
    old = _schema_zero(tmp_path)
    code, _, err = gate(run_cli, old, baseline, "--update")
    assert code == 0 and "schema version 0" in err and "baseline updated" in err
    assert gate(run_cli, old, baseline)[0] == 0


def test_update_replaces_a_baseline_of_other_cells(run_cli, baseline, tmp_path):
    # A key field added since (the card estimates were written before cards existed, read
    # as "cpu") leaves no cell in common: the gate refuses to compare, --update replaces.
    rows = [
        json.loads(line) for line in (Path(baseline) / "results.jsonl").read_text().splitlines()
    ]
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text((Path(baseline) / "manifest.json").read_text())
    lines = [json.dumps({k: v for k, v in r.items() if k != "card"}) for r in rows]
    (old / "results.jsonl").write_text("\n".join(lines) + "\n")
    assert set(load(old)["card"]) == {"cpu"}
    code, out, err = gate(run_cli, str(old), baseline)
    assert one_line_error(code, out, err) and "no cell in common" in err
    code, _, err = gate(run_cli, str(old), baseline, "--update")
    assert code == 0 and "--update replaces it" in err and "a new baseline" in err
    assert gate(run_cli, str(old), baseline)[0] == 0


def test_suite_option_runs_the_suite_then_gates_it(run_cli, tmp_path, monkeypatch):
    def no_cli(*args):
        raise AssertionError("the gate called back into the CLI")

    # The gate runs the suite through the runner's function, never through `revbench run`.
    monkeypatch.setattr(cli, "main", no_cli)
    monkeypatch.setattr(cli, "cmd_run", no_cli)
    suite = tmp_path / "tiny.toml"
    suite.write_text(
        '[defaults]\nbatch_sizes = [1, 2]\n[[group]]\nmodels = ["test_tiny_cnn"]\n'
        "resolutions = [32]\n"
    )
    ref = tmp_path / "ref"
    code, _, err = run_cli("gate", "--suite", str(suite), "--baseline", str(ref), "--update")
    assert code == 0, err
    assert len(load(ref)) == 2 and set(load(ref)["method"]) == {"estimate"}
    out_dir = tmp_path / "runs"
    # Two workers (as CI runs it) give the same bytes as the one that made the baseline.
    code, out, _ = run_cli(
        "gate", "--suite", str(suite), "--baseline", str(ref), "--out", str(out_dir),
        "--verbose", "--jobs", "2",
    )  # fmt: skip
    assert code == 0, out
    assert "gate passed" in out and "bytes_per_sample" in out
    runs = list(out_dir.glob("tiny/*/results.jsonl"))
    assert len(runs) == 1  # --out keeps the run
    manifest = json.loads((runs[0].parent / "manifest.json").read_text())
    assert manifest["invocations"][-1]["jobs"] == 2


# -------------------------------------------------------------------- the project's gate


def test_ci_suite_covers_every_registered_model():
    # Every model at two batch sizes; every mode on at least one model of each reversible
    # family (the smallest), the reversible mode on all. A new model must be added to ci.toml.
    cells = expand(load_suite("ci"), method="estimate")
    # Detectors cost a real CPU step each on the estimator: one small cell per dense task
    # (detect, segment) guards their path; EfficientDet's smallest guards its own (fake
    # tensors, anchors labelled outside the step); every classifier runs.
    registered = [i for i in list_models() if i.family != "Test" and i.task == "classify"]
    dense = [c for c in cells if c.task != "classify"]
    assert {c.model for c in cells} - {c.model for c in dense} == {i.name for i in registered}
    assert {c.task for c in dense} >= {"detect", "segment", "detect_square"}
    for info in registered:
        mine = [c for c in cells if c.model == info.name]
        assert len({c.batch_size for c in mine}) >= 2, info.name
        assert info.modes[0] in {c.mode for c in mine}, info.name
    for family in {i.family for i in registered if i.kind == "reversible"}:
        modes = {i.name: set(i.modes) for i in registered if i.family == family}
        assert any(
            {c.mode for c in cells if c.model == name} == want for name, want in modes.items()
        ), family


def test_committed_baseline_matches_the_ci_suite():
    cells = expand(load_suite("ci"), method="estimate")
    reference = load(REPO / "results" / "reference" / "ci")
    assert set(reference["status"]) == {"ok"}
    keys = {tuple(row) for row in reference[list(KEY_FIELDS)].itertuples(index=False)}
    assert keys == {c.key for c in cells}


def test_changed_estimates_need_a_new_estimator_version(run_cli, tmp_path):
    # The estimate cache keys on ESTIMATOR_VERSION: an estimate that changes under the same
    # version would be answered stale from every cache, so the gate refuses it, even as an
    # improvement; a baseline of another version must be refreshed.
    def run(name, version, shrink=0):
        records = [
            estimate_record(
                b, peak_bytes=FIXED + PER_SAMPLE * b - shrink, estimator_version=version
            )
            for b in (1, 2)
        ]
        return write_run(tmp_path / name, records)

    base = run("base", 1)
    code, _, err = gate(run_cli, base, run("same", 1))
    assert code == 0 and "estimator version" not in err
    code, out, err = gate(run_cli, base, run("better", 1, shrink=512))
    assert code == 1
    assert "changed" in err and "while ESTIMATOR_VERSION is still 1: bump it" in err
    code, _, err = gate(run_cli, base, run("bumped", 2, shrink=512))
    assert code == 1 and "the baseline's estimates are version 1, these 2: refresh" in err
    # a baseline written before versions were recorded is compared on figures alone
    old = write_run(tmp_path / "old", [estimate_record(1), estimate_record(2)])
    code, _, err = gate(run_cli, old, run("new", 1))
    assert code == 0 and "estimator version" not in err


def test_a_cell_with_two_rows_counts_its_last_and_the_gate_says_so(run_cli, baseline, tmp_path):
    current = write_run(
        tmp_path / "current",
        [estimate_record(1, peak_bytes=1), estimate_record(1), estimate_record(2)],
    )
    code, _, err = gate(run_cli, baseline, current)
    assert code == 0, err  # the last row of batch 1 is the baseline's figure
    assert "current: 1 older row(s) of cells measured again" in err
