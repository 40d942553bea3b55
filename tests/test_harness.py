"""The harness: registry, suite expansion, cells, tasks, estimator, per-sample fit, records,
launcher, runner."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
from revbench_launch_helpers import run_in_loop
from rich.console import Console
from torch import nn

from revbench.analysis import per_sample_fit
from revbench.cell import Cell
from revbench.errors import UsageError
from revbench.execute import run_inline
from revbench.loading import load
from revbench.measurement import Measurement
from revbench.methods import METHODS, Method
from revbench.methods.estimate import CUDA_BLOCK_BYTES, estimate_memory
from revbench.models import ResolutionError, UnknownModelError, create, get_info, list_models
from revbench.outcome import Outcome
from revbench.records import Record
from revbench.store import RunStore
from revbench.suite import expand, load_suite, make_cell
from revbench.trackers import cuda_peak
from revbench.worker import run_isolated

BASELINES = [
    *(f"tf_efficientnet_b{i}" for i in range(8)),
    "hrnet_w18_small",
    "hrnet_w18",
    "hrnet_w32",
    "hrnet_w48",
    "hrnet_w64",
    "vit_small_patch16_224",
    "vit_base_patch16_224",
    "vit_large_patch16_224",
    "resnet50",
    "resnet101",
]


# ------------------------------------------------------------------------------ registry


def test_every_baseline_is_registered_with_its_metadata():
    names = {i.name for i in list_models(kind="baseline")}
    assert set(BASELINES) <= names
    b7 = get_info("tf_efficientnet_b7")
    assert (b7.family, b7.size, b7.native_resolution, b7.kind) == (
        "EfficientNet",
        "B7",
        600,
        "baseline",
    )
    assert [get_info(f"tf_efficientnet_b{i}").native_resolution for i in range(8)] == [
        224,
        240,
        260,
        300,
        380,
        456,
        528,
        600,
    ]
    assert get_info("hrnet_w48").published_params == 77_470_000


def test_list_filters_by_kind_and_family():
    assert all(i.kind == "baseline" for i in list_models(kind="baseline"))
    assert {i.name for i in list_models(family="ViT")} == {
        "vit_small_patch16_224",
        "vit_base_patch16_224",
        "vit_large_patch16_224",
    }


def test_unknown_model_names_the_valid_ones():
    with pytest.raises(UnknownModelError, match="unknown model 'resnet5'.*resnet50"):
        create("resnet5")


def test_resolution_validation_names_nearest_valid_sizes():
    with pytest.raises(ResolutionError, match="nearest valid: 224 or 240"):
        create("vit_small_patch16_224", img_size=230)


def test_create_passes_overrides_and_builds_randomly_initialised():
    model = create("vit_small_patch16_224", img_size=32, depth=2)
    assert len(model.blocks) == 2
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


# -------------------------------------------------------------------------------- suites


def _suite(tmp_path, text: str):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return load_suite(str(path))


SUITE = """
description = "test"
[defaults]
batch_sizes = [1, 2]
precisions = ["fp32"]
modes = ["reversible", "vanilla"]
[[group]]
name = "a"
models = ["test_tiny_cnn", "resnet50"]
resolutions = ["native", 64]
[[group]]
name = "b"
models = ["test_tiny_cnn"]
resolutions = [32]
batch_sizes = [4]
overrides = { width = [4, 8] }
"""


def test_suite_expands_to_the_product_of_its_axes(tmp_path):
    cells = expand(_suite(tmp_path, SUITE), method="estimate")
    a = [c for c in cells if c.group == "a"]
    # 2 models x 2 resolutions x 2 batch sizes; baselines run only in vanilla mode
    assert len(a) == 8
    assert {c.mode for c in a} == {"vanilla"}
    assert {c.resolution for c in a if c.model == "resnet50"} == {224, 64}
    b = [c for c in cells if c.group == "b"]
    assert sorted(c.variant for c in b) == ["width=4", "width=8"]
    assert all(c.batch_size == 4 for c in b)


def test_cli_axes_replace_the_suite_axes(tmp_path):
    cells = expand(
        _suite(tmp_path, SUITE),
        method="cpu",
        models=["test_tiny_cnn"],
        batch_sizes=[3],
        precisions=["amp-bf16"],
        resolutions=["32"],
        scenario="infer",
    )
    # Overlapping groups collapse: group a and b now differ only by b's overrides.
    assert {
        (c.model, c.batch_size, c.precision, c.resolution, c.scenario, c.method) for c in cells
    } == {("test_tiny_cnn", 3, "amp-bf16", 32, "infer", "cpu")}
    assert sorted(c.variant for c in cells) == ["", "width=4", "width=8"]


def test_cli_models_select_from_groups_and_fall_back_to_defaults(tmp_path):
    cells = expand(
        _suite(tmp_path, SUITE), method="estimate", models=["resnet50", "vit_small_patch16_224"]
    )
    # resnet50 keeps group a's axes; the unlisted ViT takes the suite's defaults
    assert {(c.model, c.resolution, c.batch_size, c.group) for c in cells} == {
        ("resnet50", 224, 1, "a"),
        ("resnet50", 224, 2, "a"),
        ("resnet50", 64, 1, "a"),
        ("resnet50", 64, 2, "a"),
        ("vit_small_patch16_224", 224, 1, "cli"),
        ("vit_small_patch16_224", 224, 2, "cli"),
    }


def test_builtin_suites_ship_with_the_package():
    smoke = load_suite("smoke")
    assert smoke.path.name == "smoke.toml"
    cells = expand(load_suite("imagenet-train-mem"), method="estimate")
    models = {c.model for c in cells}
    assert set(BASELINES) <= models
    for model in BASELINES:  # at least two batch sizes each, at native resolution
        mine = [c for c in cells if c.model == model]
        assert len({c.batch_size for c in mine}) >= 2
        assert {c.resolution for c in mine} == {get_info(model).native_resolution}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[group]]\nmodels = [\n", r"s\.toml:2: Invalid value"),
        ("[[group]]\nmodels = 'a' 'b'\nname = 1\n", r"s\.toml:2: "),
        (
            "[[group]]\nmodels = ['resnet50']\nbatch_size = [2]\n",
            r"s\.toml:3: unknown key 'batch_size'",
        ),
        ("description = 'x'\n", r"no \[\[group\]\] table"),
        ("[[group]]\nname = 'x'\n", r"s\.toml:1: group 1 names no models"),
        ("[[group]]\nmodels = ['resnet50']\nbudgets = [16]\n", r"s\.toml:3: .*budgets.*16GiB"),
    ],
)
def test_malformed_suite_reports_file_and_line(tmp_path, text, message):
    with pytest.raises(UsageError, match=message):
        _suite(tmp_path, text)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"models": ["nope"]}, "unknown model 'nope'; valid: .*resnet50"),
        ({"precisions": ["fp8"]}, "precision 'fp8' is invalid; valid: fp32, amp-bf16, amp-fp16"),
        ({"modes": ["fast"]}, "mode 'fast' is invalid; valid: reversible, vanilla, checkpoint"),
        (
            {"resolutions": ["100"], "models": ["hrnet_w18"]},
            "hrnet_w18: img_size 100 is invalid.*nearest valid: 96 or 128",
        ),
        ({"resolutions": ["big"]}, "resolution 'big' is invalid"),
        ({"batch_sizes": [0]}, "batch size 0 is invalid"),
        ({"scenario": "eval"}, "scenario 'eval' is invalid; valid: train, infer"),
    ],
)
def test_bad_axis_values_are_one_line_errors(tmp_path, kwargs, message):
    with pytest.raises(UsageError, match=message) as err:
        expand(_suite(tmp_path, SUITE), method="estimate", **kwargs)
    assert "\n" not in str(err.value)


def test_unknown_method_and_suite():
    with pytest.raises(UsageError, match="method 'gpu' is invalid; valid: cuda, estimate, cpu"):
        expand(load_suite("smoke"), method="gpu")
    with pytest.raises(UsageError, match="unknown suite 'smok'; valid: .*smoke"):
        load_suite("smok")


# ----------------------------------------------------------------------------- estimate


class OneLinear(nn.Module):
    """Known sizes: a 1000x1000 fp32 weight (4,000,000 bytes) and a 1000 bias."""

    def __init__(self):
        super().__init__()
        self.num_classes = 1000
        self.fc = nn.Linear(1000, 1000)

    def forward(self, x):  # (B, 3, R, R) -> (B, 1000)
        return self.fc(x.flatten(1)[:, :1000])


def test_estimate_calibration_on_known_allocations():
    est = estimate_memory(OneLinear, batch_size=4, resolution=20, optimizer="sgd")
    weight = 4_000_256  # 4,000,000 bytes rounded up to CUDA's 512-byte blocks
    bias = 4096  # 4000 bytes rounded up to CUDA's 512-byte blocks
    assert est.by_category["parameters"] == weight + bias
    assert est.by_category["optimizer_state"] == weight + bias  # SGD momentum: one buffer each
    # The peak is reached as the weight gradient is produced; MemTracker labels a gradient
    # GRAD only once it lands in .grad, so a fresh one still counts as a temporary.
    assert est.by_category["gradients"] + est.by_category["temporaries"] >= weight + bias
    assert est.peak_bytes == sum(est.by_category.values())
    assert est.peak_bytes >= 3 * (weight + bias)  # weights + momentum + gradients
    adamw = estimate_memory(OneLinear, batch_size=4, resolution=20, optimizer="adamw")
    # AdamW: exp_avg and exp_avg_sq per parameter (+ a step counter each)
    assert adamw.by_category["optimizer_state"] >= 2 * (weight + bias)


def test_estimate_is_deterministic_and_breakdown_sums_to_peak():
    a = estimate_memory("resnet50", batch_size=2, resolution=64)
    b = estimate_memory("resnet50", batch_size=2, resolution=64)
    assert a == b
    assert sum(a.by_category.values()) == a.peak_bytes
    assert all(v % CUDA_BLOCK_BYTES == 0 for v in a.by_category.values())
    assert a.by_category["activations"] > 0 and a.by_category["optimizer_state"] > 0


def test_estimate_sees_mixed_precision_and_batch_size():
    # A conv, a BatchNorm and a linear layer: enough for autocast to matter, and cheap.
    fp32 = estimate_memory("test_tiny_cnn", batch_size=4, resolution=64)
    bf16 = estimate_memory("test_tiny_cnn", batch_size=4, resolution=64, precision="amp-bf16")
    bigger = estimate_memory("test_tiny_cnn", batch_size=8, resolution=64)
    assert bf16.by_category["activations"] < fp32.by_category["activations"]
    assert bigger.by_category["activations"] > fp32.by_category["activations"]


def test_estimate_inference_keeps_no_gradients_or_optimizer_state():
    est = estimate_memory("test_tiny_cnn", batch_size=2, resolution=64, scenario="infer")
    assert est.by_category["gradients"] == 0
    assert est.by_category["optimizer_state"] == 0


# ------------------------------------------------------------------------ per-sample fit


def _record(
    batch: int, peak: int | None, status: str = "ok", model: str = "test_tiny_cnn"
) -> Record:
    cell = make_cell(model, resolution=32, batch_size=batch, method="estimate")
    return Record.for_cell(cell, status=status, measurement=Measurement(peak_bytes=peak))


def test_per_sample_fit_is_the_least_squares_slope(tmp_path):
    store = RunStore.create(tmp_path, "fit")
    # exactly 3 MB per sample plus 100 MB fixed, and one OOM row that must be ignored
    for batch in (1, 2, 4, 8):
        store.append(_record(batch, 100_000_000 + 3_000_000 * batch))
    store.append(_record(16, None, status="oom"))
    store.append(_record(2, 5_000_000, model="resnet50"))  # one batch size only: not fitted
    fit = per_sample_fit(load(store.results_path))
    assert list(fit["model"]) == ["test_tiny_cnn"]
    row = fit.iloc[0]
    assert row["bytes_per_sample"] == pytest.approx(3_000_000)
    assert row["fixed_bytes"] == pytest.approx(100_000_000)
    assert row["batch_sizes"] == "1,2,4,8"


# ---------------------------------------------------------------------- results store


def test_records_round_trip_and_later_rows_win(tmp_path):
    store = RunStore.create(tmp_path, "rt")
    store.append(_record(2, None, status="error"))
    store.append(_record(2, 1234))
    df = load(store.dir)
    assert len(df) == 1 and df.iloc[0]["peak_bytes"] == 1234 and df.iloc[0]["status"] == "ok"
    assert len(load(store.dir, latest_only=False)) == 2
    assert store.measured_keys() == {_record(2, 1).key}


def test_truncated_last_line_from_a_killed_run_is_tolerated(tmp_path):
    store = RunStore.create(tmp_path, "kill")
    store.append(_record(1, 10))
    with open(store.results_path, "a") as f:
        f.write('{"model": "test_tiny')  # killed mid-write
    assert len(load(store.results_path)) == 1


def test_schema_version_mismatch_is_a_usage_error(tmp_path):
    path = tmp_path / "old.jsonl"
    row = json.loads(_record(1, 10).to_json())
    row["schema_version"] = 0
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(UsageError, match="schema version 0"):
        load(path)


def test_records_and_store_load_neither_torch_nor_pandas():
    # The writer's and --resume's side of the results: a fresh interpreter shows what they pull in.
    probe = (
        "import sys, revbench.records, revbench.store, revbench.environment\n"
        "print(','.join(m for m in ('torch', 'pandas', 'revbench.methods') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_csv_export(tmp_path):
    from revbench.loading import export_csv

    store = RunStore.create(tmp_path, "csv")
    store.append(_record(1, 10))
    export_csv(load(store.dir), tmp_path / "out.csv")
    assert pd.read_csv(tmp_path / "out.csv")["peak_bytes"].tolist() == [10]


# --------------------------------------------------------------------------------- cells


def _cell(**fields) -> Cell:
    return make_cell("test_tiny_cnn", **{"resolution": 32, "batch_size": 2, **fields})


def test_cells_with_different_overrides_are_different():
    narrow, wide = _cell(overrides={"width": 4}), _cell(overrides={"width": 8})
    assert narrow != wide
    assert len({narrow, wide}) == 2  # distinct as set members: their hashes differ too
    assert narrow.key != wide.key
    # The order overrides are given in does not matter.
    two = {"width": 4, "num_classes": 3}
    assert _cell(overrides=two) == _cell(overrides=dict(reversed(two.items())))


def test_cell_json_round_trips_with_sequence_overrides():
    cell = Cell(
        model="m",
        family="F",
        kind="baseline",
        size="S",
        task="classify",
        resolution=32,
        batch_size=2,
        overrides={"width": 4, "dims": [1, [2, 3]]},
    )
    again = Cell.from_json(cell.to_json())
    assert again == cell and hash(again) == hash(cell)
    assert again.variant == "dims=[1, [2, 3]],width=4"  # as the suite wrote it


def test_cells_carry_the_registry_metadata_their_records_need():
    cell = make_cell("tf_efficientnet_b7", resolution=600, batch_size=1)
    assert (cell.family, cell.kind, cell.size, cell.task) == (
        "EfficientNet",
        "baseline",
        "B7",
        "classify",
    )
    record = Record.for_cell(cell)
    assert (record.family, record.kind, record.size, record.task) == (
        "EfficientNet",
        "baseline",
        "B7",
        "classify",
    )


# --------------------------------------------------------------------------------- tasks


def test_a_task_the_model_does_not_serve_is_refused_before_anything_runs(tmp_path):
    base = '[[group]]\nmodels = ["revbifpn_s0"]\nresolutions = [64]\nbatch_sizes = [1]\n'
    features = "overrides = { features_only = [true] }\n"
    suite = _suite(tmp_path, base + 'task = "classify"\n' + features)
    with pytest.raises(UsageError) as err:
        expand(suite, method="estimate")
    assert str(err.value) == (
        "task 'classify' is invalid for revbifpn_s0[features_only=True]: it serves 'features'"
    )
    # Without a task in the suite the model's own is taken, and revbench cannot run it.
    with pytest.raises(UsageError, match=r"^revbifpn_s0\[features_only=True\] serves task "):
        expand(_suite(tmp_path, base + features), method="estimate")
    with pytest.raises(UsageError, match="task 'pose' is invalid; valid: classify, detect, "):
        expand(_suite(tmp_path, base + 'task = "pose"\n'), method="estimate")
    with pytest.raises(UsageError, match="task 'detect' is invalid for revbifpn_s0: it serves"):
        expand(_suite(tmp_path, base + 'task = "detect"\n'), method="estimate")
    (cell,) = expand(_suite(tmp_path, base), method="estimate")
    assert cell.task == "classify"


def test_resolutions_are_checked_against_the_model_with_its_overrides(tmp_path):
    # RevViT-S needs a multiple of its patch size: 16 by default, 8 here.
    text = '[[group]]\nmodels = ["revvit_small"]\noverrides = { patch_size = [8] }\n'
    cells = expand(_suite(tmp_path, text + "resolutions = [40]\n"), method="estimate")
    assert {(c.resolution, c.variant) for c in cells} == {(40, "patch_size=8")}
    with pytest.raises(UsageError, match="img_size 36 is invalid.*nearest valid: 32 or 40"):
        expand(_suite(tmp_path, text + "resolutions = [36]\n"), method="estimate")


def test_an_override_the_model_does_not_take_is_refused_up_front(tmp_path):
    text = (
        '[[group]]\nmodels = ["test_tiny_cnn"]\nresolutions = [32]\noverrides = { depth = [2] }\n'
    )
    with pytest.raises(UsageError, match="unknown override.*depth.*valid: width"):
        expand(_suite(tmp_path, text), method="estimate")


def test_classify_task_refuses_a_model_without_num_classes():
    from revbench.scenario import build_step

    model = nn.Sequential(nn.Flatten(), nn.LazyLinear(10))
    with pytest.raises(ValueError, match="Sequential has no num_classes"):
        build_step(
            model, scenario="train", precision="fp32", batch_size=2, resolution=8, device="cpu"
        )


# ------------------------------------------------------------------------------ launcher


def _probe(batch: int, method: str = "cpu", **fields) -> Cell:
    return make_cell(
        "test_oom_probe",
        resolution=32,
        batch_size=batch,
        method=method,
        warmup_steps=0,
        measure_steps=1,
        **fields,
    )


def test_oom_and_crash_become_statuses_not_crashes():
    ok, oom = run_inline(_probe(1)), run_inline(_probe(2))
    assert ok.status == "ok" and ok.measurement.step_time_ms_median > 0
    assert ok.measurement.measure_steps == 1
    assert oom.status == "oom" and oom.message.startswith("OutOfMemoryError: CUDA out of memory")
    assert oom.measurement == Measurement()  # nothing measured
    crashed = run_inline(make_cell("test_crash", resolution=32, batch_size=1, method="cpu"))
    assert crashed.status == "error" and "constructor failed on purpose" in crashed.message


def test_outcome_round_trips_through_the_worker_protocol():
    outcome = Outcome("ok", measurement=Measurement(peak_bytes=1536, step_time_ms_median=2.5))
    assert Outcome.from_json(outcome.to_json()) == outcome


def test_isolated_worker_reports_an_oom_as_a_row():
    # One subprocess: the cell runs in a fresh interpreter, which reports its outcome.
    oom = run_isolated(_probe(2))
    assert oom.status == "oom" and "out of memory" in oom.message


def test_cuda_method_without_gpu_is_an_error_row():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = run_inline(make_cell("test_tiny_cnn", resolution=32, batch_size=1, method="cuda"))
    assert out.status == "error" and "needs a CUDA GPU" in out.message


def test_cuda_peak_reads_the_peaks_even_when_the_block_raises(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 4096)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device: 2 << 20)
    with pytest.raises(RuntimeError, match="failed inside"):
        with cuda_peak() as peak:
            calls.append("run")
            raise RuntimeError("failed inside")
    assert calls == ["reset", "run"]  # reset before the block, not after
    assert (peak.allocated_bytes, peak.reserved_bytes) == (4096, 2 << 20)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_peak_reads_a_known_allocation():
    mib = 1 << 20
    before = torch.cuda.memory_allocated()
    with cuda_peak() as peak:
        block = torch.empty(256 * mib, dtype=torch.uint8, device="cuda")
        del block
    # 256 MiB is a whole number of 512-byte blocks: the allocator hands out exactly that.
    assert peak.allocated_bytes == before + 256 * mib
    assert peak.reserved_bytes >= 256 * mib


# --------------------------------------------------------------------------------- runner


class FakeCuda(Method):
    """Stands in for the cuda method: writes a snapshot naming the cell, measures a fixed peak."""

    name = "cuda"
    records_snapshots = True

    def measure(self, cell, snapshot_path=None):
        snapshot_path.write_text(cell.label())
        return Measurement(peak_bytes=1024 * cell.batch_size, snapshot_file=snapshot_path.name)


def test_resume_keeps_the_snapshots_of_earlier_invocations(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "cuda", FakeCuda())
    cells = [_probe(b, method="cuda") for b in (1, 2, 3)]
    store = RunStore.create(tmp_path, "snap")
    quiet = Console(file=open(tmp_path / "log.txt", "w"))
    first = run_in_loop(cells[:2], store, isolate=False, memory_snapshot=True, console=quiet)
    second = run_in_loop(
        cells, store, isolate=False, resume=True, memory_snapshot=True, console=quiet
    )
    assert second.skipped == 2 and len(second.records) == 1
    records = first.records + second.records
    names = [r.snapshot_file for r in records]
    assert len(set(names)) == 3
    # Every snapshot still holds the cell its record names: nothing was overwritten.
    for record, cell in zip(records, cells):
        assert (store.dir / record.snapshot_file).read_text() == cell.label()
    assert sorted(p.name for p in store.dir.glob("*.pickle")) == sorted(names)


def test_a_method_is_imported_when_first_asked_for(monkeypatch):
    from revbench.methods import base
    from revbench.methods.cpu import CpuMethod

    monkeypatch.setattr(base.METHODS, "_entries", dict(base.METHODS._entries))
    base.register_method("revbench.methods.cpu:CpuMethod", "cpu-again")
    assert base.METHODS._entries["cpu-again"] == "revbench.methods.cpu:CpuMethod"
    assert "cpu-again" in base.method_names()  # its name is known before it is imported
    method = base.get_method("cpu-again")
    assert type(method) is CpuMethod and base.get_method("cpu-again") is method
    with pytest.raises(TypeError, match="give 'package.module:Class' and its name"):
        base.register_method("revbench.methods.cpu:CpuMethod")
