"""The estimator's cost per model: any batch size from two traces, to the byte.

- Replaying MemTracker's ledger gives MemTracker's own peak and breakdown.
- For a model of every family that the estimator traces on fake tensors (EfficientDet's
  training step included), the estimate extrapolated to a third batch size equals a direct
  estimate there: peak, every category, reserved peak, fragmentation and the allocator
  events. The direct estimate's outputs are all FakeTensorMode's; the traced ones come
  from the fast paths and remembered outputs as in a run. Every registered model is checked
  at full size in a `slow` test (4 min on 2 cores; run with REVBENCH_EVERY_MODEL=1).
- Traces that do not line up (a step whose operators depend on the batch) are not
  extrapolated: the third batch size is traced, and equals the direct estimate too.
- The estimate method keeps a model's estimator between cells.
"""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import replace

import pytest
import torch
from test_model_contract import FAMILIES, FAMILY_FIRSTS
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools import mem_tracker as _mt

from revbench.axes import DdpConfig
from revbench.methods import memtrackers
from revbench.methods.estimate import StepEstimator, estimate_memory, model_factory
from revbench.methods.estimate_method import EstimateMethod, on_real_tensors
from revbench.methods.fake_fastpaths import FastOutputs
from revbench.methods.memtrackers import LedgerTracker, PeakOnlyMemTracker
from revbench.methods.step_trace import (
    DEL,
    StepTrace,
    extrapolate,
    in_settled_order,
    replay,
    rounded,
)
from revbench.models import get_info, list_models
from revbench.scenario import build_step
from revbench.suite import make_cell

pytestmark = pytest.mark.usefixtures("one_thread")

TRACED, OTHER = (2, 3), 5  # two traced batch sizes, and one to extrapolate to


def sized_by_resolution(overrides: dict) -> dict:
    """Overrides less img_size: the estimator builds the model at its resolution."""
    return {k: v for k, v in overrides.items() if k != "img_size"}


REVVIT_TINY = sized_by_resolution(FAMILIES["RevViT"].tiny)
# Tiny widths, three columns of one block per level: the fewest operators a RevCol has.
REVCOL_TINY = sized_by_resolution({**FAMILIES["RevCol"].tiny, **FAMILIES["RevCol"].shallow})


def figures(est) -> tuple:
    return est.peak_bytes, est.by_category, est.peak_reserved_bytes, est.fragmentation_bytes


def check_extrapolation(name: str, resolution: int, **overrides) -> bool:
    """Asserts the estimate at OTHER after two traced batch sizes is the direct one, to the
    byte; True where it came without a step (extrapolated), False where it was traced.

    The direct estimate is FakeTensorMode's alone, from its cache cleared: every output
    made by FakeTensorMode, none by the fast paths or from remembered outputs
    (`revbench.methods.fake_fastpaths`), which the traced steps use as the estimator does."""
    task = get_info(name).task
    factory = model_factory(name, resolution, overrides)
    estimator = StepEstimator(factory, resolution=resolution, task=task)
    recalled = memtrackers.FAST_OUTPUTS.recalled
    for batch in TRACED:
        estimator.estimate(batch)
    assert memtrackers.FAST_OUTPUTS.recalled > recalled  # outputs were remembered
    steps = estimator.steps_run
    extrapolated = estimator.estimate(OTHER)
    with fakemodes_outputs_only():
        direct = estimate_memory(
            name, batch_size=OTHER, resolution=resolution, task=task, **overrides
        )
    assert figures(extrapolated) == figures(direct)
    assert extrapolated.events == direct.events  # the allocator sees the same calls
    return estimator.steps_run == steps


class _FakeTensorOnly(FastOutputs):
    """Every operator through FakeTensorMode: no fast outputs, nothing remembered."""

    def call_fake(self, func, args, kwargs):
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def fakemodes_outputs_only():
    """Traced steps inside get every output from FakeTensorMode, its cache cleared."""
    kept = memtrackers.FAST_OUTPUTS
    FakeTensorMode.cache.clear()
    memtrackers.FAST_OUTPUTS = _FakeTensorOnly()
    try:
        yield
    finally:
        memtrackers.FAST_OUTPUTS = kept


def fake_path(name: str) -> bool:
    """Whether the estimator traces the model's train step on fake tensors."""
    cell = make_cell(name, resolution=get_info(name).min_resolution, batch_size=1)
    return not on_real_tensors(cell)


# ---------------------------------------------------------------------------- the ledger


class _BothTrackers(LedgerTracker):
    """Writes the ledger and keeps MemTracker's own totals and peak, to compare the two."""

    def _update_snap(self, u_type, winfo, old_mem_consumed=None, old_reftype=None) -> None:
        _mt.MemTracker._update_snap(self, u_type, winfo, old_mem_consumed, old_reftype)
        LedgerTracker._update_snap(self, u_type, winfo, old_mem_consumed, old_reftype)

    def _update_peak_stats(self, peak_state) -> None:
        LedgerTracker._update_peak_stats(self, peak_state)
        PeakOnlyMemTracker._update_peak_stats(self, peak_state)


def _tracked_step(factory, tracker_type, batch_size: int) -> LedgerTracker:
    """A tracker of `tracker_type` after one AdamW train step of the model at 32 px, on
    fake tensors, after a warm-up step. Garbage collection is paused during the tracked
    step, as the estimator pauses it, so cycles cannot move frees from run to run."""
    with torch.device("meta"):
        net = factory()
    with FakeTensorMode(allow_non_fake_inputs=True):
        net = net.to_empty(device="cpu")
        step = build_step(
            net, scenario="train", precision="fp32", batch_size=batch_size, resolution=32,
            device="cpu", optimizer="adamw",
        )  # fmt: skip
        step.run()
        tracker = tracker_type()
        tracker.track_external(net, step.optimizer, step.inputs, step.targets)
        gc.disable()
        try:
            with tracker:
                step.run()
        finally:
            gc.enable()
    return tracker


def test_ledger_replay_is_memtrackers_peak(monkeypatch):
    # A tiny RevViT step with AdamW: activations, temporaries, gradients re-attributed once
    # accumulated, optimizer state; rounding of the small storages to 512 bytes, which
    # MemTracker makes only on CUDA devices and is told to make here.
    monkeypatch.setattr(
        _mt._WeakRefInfo,
        "_calculate_mem_consumed",
        lambda winfo: rounded(winfo.size * winfo.element_size),
    )
    tracker = _tracked_step(model_factory("revvit_small", 32, REVVIT_TINY), _BothTrackers, 3)
    (memtracker,) = tracker.get_tracker_snapshot("peak").values()
    ours = replay(StepTrace(3, tuple(tracker.ops), tuple(tracker.sizes), None))
    assert ours.peak_bytes == memtracker["Total"]
    assert ours.by_category == {
        "parameters": memtracker[tracker._ref_class.PARAM],
        "buffers": memtracker[tracker._ref_class.BUFFER],
        "gradients": memtracker[tracker._ref_class.GRAD],
        "activations": memtracker[tracker._ref_class.ACT],
        "temporaries": memtracker[tracker._ref_class.TEMP],
        "optimizer_state": memtracker[tracker._ref_class.OPT],
        "other": memtracker[tracker._ref_class.OTH],
        "library_workspace": 0,  # not MemTracker's: a card's (this ledger is the CPU step's)
    }
    assert ours.by_category["gradients"] > 0 and ours.by_category["optimizer_state"] > 0


class _StockModuleHooks(LedgerTracker):
    """The ledger written under MemTracker's own module hooks (per-module statistics)."""

    _pre_fw_hook = _mt.MemTracker._pre_fw_hook
    _post_fw_hook = _mt.MemTracker._post_fw_hook
    _pre_bw_hook = _mt.MemTracker._pre_bw_hook
    _post_bw_hook = _mt.MemTracker._post_bw_hook


@pytest.mark.parametrize(
    "name, mode",
    [("revvit_small", "reversible"), ("revvit_small", "checkpoint"), ("revcol_tiny", "vanilla")],
)
def test_ledger_is_the_same_under_memtrackers_own_module_hooks(name, mode):
    # LedgerTracker's hooks leave out MemTracker's per-module snapshots; what they track
    # (parameters and gradients on a module's first call, recomputation in the backward
    # under checkpointing) must leave the ledger entry for entry as it was.
    overrides = REVVIT_TINY if name == "revvit_small" else REVCOL_TINY
    ledgers = []
    for tracker_type in (LedgerTracker, _StockModuleHooks):
        factory = model_factory(name, 32, {**overrides, "mode": mode})
        tracker = _tracked_step(factory, tracker_type, 2)
        ops = in_settled_order(tracker.ops, lambda op: op[0] == DEL, lambda op: op[1])
        ledgers.append((ops, tuple(tracker.sizes)))
    ours, stock = ledgers
    assert ours == stock
    assert any(op[2] == "GRAD" for op in ours[0] if len(op) > 2)


# -------------------------------------------------------------------- affine extrapolation


def _trace(batch: int, sizes: tuple[int, ...]) -> StepTrace:
    ops = (("add", 0, "ACT", None), ("check",), ("add", 1, "ACT", None), ("check",))
    return StepTrace(batch, ops, sizes, None)


def test_sizes_are_extrapolated_affinely_and_exactly():
    # 1000 B + 600 B per sample, and a constant 700 B.
    got = extrapolate(_trace(1, (1600, 700)), _trace(3, (2800, 700)), 10)
    assert got.sizes == (7000, 700) and got.batch_size == 10
    assert replay(got).peak_bytes == 7168 + 1024  # each rounded up to 512 B


@pytest.mark.parametrize(
    "second, reason",
    [
        (_trace(3, (2801, 700)), "not whole bytes at the asked batch"),
        (_trace(3, (400, 700)), "a storage that would shrink below nothing"),
        (StepTrace(3, (("add", 0, "ACT", None), ("check",)), (2800,), None), "other entries"),
        (_trace(1, (1600, 700)), "the same batch size twice"),
    ],
)
def test_no_extrapolation_without_an_exact_answer(second, reason):
    assert extrapolate(_trace(1, (1600, 700)), second, 10) is None, reason


def test_frees_that_land_together_are_put_in_storage_order():
    # Storages released together die in an address-hashed order that changes from process
    # to process; the trace orders each run of frees, so one step gives one trace.
    ops = [("add", 0, "ACT", None), ("del", 2, "ACT", None), ("del", 0, "ACT", None),
           ("check",), ("del", 1, "ACT", None)]  # fmt: skip
    settled = in_settled_order(ops, lambda op: op[0] == "del", lambda op: op[1])
    assert [op[1] for op in settled if op[0] == "del"] == [0, 2, 1]
    assert settled[0] == ops[0] and settled[3] == ("check",)  # nothing else moves


# -------------------------------------------------------------------- models, to the byte

TINY_BY_FAMILY: dict[str, tuple[str, int, dict]] = {
    # family: (model, resolution, overrides); the reversible families use the contract
    # test's tiny layouts, the others their smallest size with fewer blocks where timm
    # takes it.
    **{
        get_info(name).family: (
            name,
            FAMILIES[get_info(name).family].shallow["img_size"],
            sized_by_resolution(FAMILIES[get_info(name).family].tiny)
            | sized_by_resolution(FAMILIES[get_info(name).family].shallow),
        )
        for name in FAMILY_FIRSTS
    },
    "ViT": ("vit_small_patch16_224", 32, dict(depth=2, embed_dim=32, num_heads=2)),
    "ResNet": ("resnet50", 32, dict(layers=(1, 1, 1, 1))),
    "EfficientNet": ("tf_efficientnet_b0", 32, {}),
    "HRNet": ("hrnet_w18_small", 32, {}),
    "BiFPN": ("bifpn", 128, dict(width=16, num_layers=1)),
    "EfficientDet": ("tf_efficientdet_d0", 128, {}),  # its train step; inference is dense
}


def test_every_traced_family_is_covered():
    traced = {get_info(name).family for name in _names() if fake_path(name)}
    assert traced <= set(TINY_BY_FAMILY), "add a tiny case for the family"


def _names() -> list[str]:
    """Registered models, less the test suite's own (family "Test")."""
    return [info.name for info in list_models() if info.family != "Test"]


@pytest.mark.parametrize("family", sorted(TINY_BY_FAMILY))
def test_extrapolated_estimate_is_the_direct_one(family):
    name, resolution, overrides = TINY_BY_FAMILY[family]
    assert check_extrapolation(name, resolution, **overrides), f"{name}: not extrapolated"


@pytest.mark.parametrize(
    "family, settings",
    [
        ("RevViT", dict(precision="amp-bf16", optimizer="adamw")),
        ("RevBiFPN", dict(precision="amp-bf16", optimizer="adamw")),
        ("RevViT", dict(precision="amp-fp16")),
        ("RevViT", dict(ddp=DdpConfig(2))),
        ("RevViT", dict(ddp=DdpConfig(2, bucket_cap_mb=0.01, gradient_as_bucket_view=True))),
        ("RevViT", dict(scenario="infer")),
        ("RevCol", dict(card="cpu")),
    ],
    ids=[
        "amp-adamw",
        "revbifpn-amp-adamw",
        "amp-fp16",
        "ddp",
        "ddp-bucket-views",
        "infer",
        "revcol-cpu-card",
    ],
)
def test_step_settings_extrapolate_too(family, settings):
    # The direct estimate's outputs all FakeTensorMode's, as in check_extrapolation.
    name, resolution, overrides = TINY_BY_FAMILY[family]
    factory = model_factory(name, resolution, overrides)
    estimator = StepEstimator(factory, resolution=resolution, **settings)
    for batch in TRACED:
        estimator.estimate(batch)
    steps = estimator.steps_run
    extrapolated = estimator.estimate(OTHER)
    assert estimator.steps_run == steps
    with fakemodes_outputs_only():
        direct = estimate_memory(
            name, batch_size=OTHER, resolution=resolution, **settings, **overrides
        )
    assert figures(extrapolated) == figures(direct)
    assert extrapolated.events == direct.events


class PerSample(nn.Module):
    """A step whose operators depend on the batch: one matmul per sample."""

    num_classes = 4

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x):
        return torch.cat([self.fc(x[i].flatten()).unsqueeze(0) for i in range(x.shape[0])])


def test_traces_that_do_not_line_up_are_traced_again():
    estimator = StepEstimator(PerSample, resolution=8)
    for batch in TRACED:
        estimator.estimate(batch)
    steps = estimator.steps_run
    est = estimator.estimate(OTHER)
    assert estimator.steps_run == steps + 1  # traced, not extrapolated
    assert figures(est) == figures(estimate_memory(PerSample, batch_size=OTHER, resolution=8))


def test_the_estimate_method_keeps_a_model_between_its_batch_sizes():
    method = EstimateMethod()
    cell = make_cell("revvit_small", resolution=32, batch_size=1, overrides=REVVIT_TINY)
    for batch in (2, 3, 4, 6):
        measured = method.measure(replace(cell, batch_size=batch))
    (estimator,) = method._estimators.values()
    assert estimator.steps_run == 2  # two traced, no warm-up; 4 and 6 extrapolated
    method.measure(replace(cell, batch_size=1))
    assert estimator.steps_run == 3  # batch 1 is always traced
    direct = estimate_memory(
        "revvit_small", batch_size=6, resolution=32, mode="vanilla", **REVVIT_TINY
    )
    assert measured.peak_bytes == direct.peak_bytes
    assert measured.peak_reserved_bytes == direct.peak_reserved_bytes


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("REVBENCH_EVERY_MODEL"),
    reason="about 4 min on 2 cores: REVBENCH_EVERY_MODEL=1 runs it",
)
@pytest.mark.parametrize("name", [n for n in _names() if fake_path(n)])
def test_every_registered_model_extrapolates_to_the_byte(name):
    """Full-size layouts at the smallest resolution each model takes (3.5 min in all)."""
    assert check_extrapolation(name, get_info(name).min_resolution), f"{name}: not extrapolated"


# ------------------------------------------------------- no warm-up step, the same bytes


class UnusedBranch(nn.Module):
    """A classifier with a parameter no loss reaches: a first step gives it no gradient,
    so no optimizer state."""

    num_classes = 10

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 10)
        self.unused = nn.Linear(64, 64)

    def forward(self, x):
        return self.fc(x.flatten(1))


class BuildsOnFirstUse(nn.Module):
    """A classifier that keeps a tensor made in its first forward (a lazily built table)."""

    num_classes = 10

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 10)
        self.table = None

    def forward(self, x):
        if self.table is None:
            self.table = torch.ones(4096, device=x.device)
        return self.fc(x.flatten(1)) + self.table[:10]


@pytest.mark.parametrize(
    "factory, steps",
    [
        (model_factory("revvit_small", 32, REVVIT_TINY), 1),  # primed: the one traced step
        (UnusedBranch, 1),  # its primed state is taken out of the one traced step
        # The first column's fusion weights take no gradient (it has no earlier column).
        (model_factory("revcol_tiny", 32, REVCOL_TINY), 1),
        (BuildsOnFirstUse, 2),  # the first tracked step is not steady: traced again
    ],
    ids=["steady", "unused-parameter", "revcol-unused-parameters", "built-on-first-use"],
)
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_primed_optimizer_state_is_the_warm_up_steps(factory, steps, optimizer):
    resolution = 32 if factory not in (UnusedBranch, BuildsOnFirstUse) else 8
    primed = StepEstimator(factory, resolution=resolution, optimizer=optimizer)
    warmed = StepEstimator(factory, resolution=resolution, optimizer=optimizer, prime=False)
    est, warm = primed.estimate(2), warmed.estimate(2)
    assert primed.steps_run == steps and warmed.steps_run == 2
    assert figures(est) == figures(warm)
    assert est.events == warm.events  # the allocator model sees the same calls
