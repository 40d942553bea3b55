"""thop's MACs under the published convention count the same on the meta device as on real
CPU tensors: every rule reads shapes, never values (the ci baseline's counts agree too)."""

from __future__ import annotations

import contextlib
import sys

import pytest
import torch

from revbench import counting, status
from revbench.counting import count_macs_both, count_macs_thop, count_params
from revbench.launcher import RunContext
from revbench.measurement import Counts
from revbench.models import create, get_info
from revbench.outcome import Outcome
from revbench.suite import counts_key, make_cell

pytestmark = pytest.mark.usefixtures("one_thread")

# Conv with and without bias, BatchNorm, bilinear upsampling, Linear, attention (thop's own
# rules for what revbench leaves to it), each model small.
CASES = [
    ("revbifpn_s0", 64, {}),
    ("bifpn", 128, dict(width=16, num_layers=1)),
    ("vit_small_patch16_224", 32, dict(depth=2, embed_dim=32, num_heads=2)),
    ("resnet50", 32, dict(layers=(1, 1, 1, 1))),
]


@pytest.mark.parametrize("name, resolution, overrides", CASES, ids=[c[0] for c in CASES])
def test_meta_device_counts_what_real_tensors_count(name, resolution, overrides):
    torch.manual_seed(0)
    real = count_macs_thop(create(name, img_size=resolution, **overrides), resolution)
    with torch.device("meta"):
        on_meta = create(name, img_size=resolution, **overrides)
    assert count_macs_thop(on_meta, resolution) == real > 0


def test_thop_counts_the_same_without_its_parameter_hooks(monkeypatch):
    # Its parameter count (thrown away) is left out for the call, and put back after.
    import thop  # noqa: F401  (loads thop.profile)

    profile_module = sys.modules["thop.profile"]
    original = profile_module.count_parameters
    calls = []

    def spy(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(profile_module, "count_parameters", spy)
    name, resolution, overrides = CASES[0]
    with torch.device("meta"):
        model = create(name, img_size=resolution, **overrides)
    without = count_macs_thop(model, resolution)
    assert not calls and profile_module.count_parameters is spy  # left out, then put back
    monkeypatch.setattr(counting, "_thop_counting_macs_only", contextlib.nullcontext)
    assert count_macs_thop(model, resolution) == without > 0
    assert calls  # thop's own hooks ran this time


# Memory-only fields (`ModelConfig.memory_only`) change how the step keeps its tensors,
# never the weights or the forward: one count serves every value of them.
MEMORY_ONLY = [
    ("revbifpn_s0", 64, {"recompute_neck": False, "num_ext_layers": 0, "blocks_per_stage": 1}),
    ("revcol_tiny", 64, {"store_columns": False, "num_columns": 2}),
]


@pytest.mark.parametrize(
    "name, resolution, memory_only", MEMORY_ONLY, ids=[c[0] for c in MEMORY_ONLY]
)
def test_memory_only_fields_leave_the_counts_alone(name, resolution, memory_only):
    assert set(memory_only) & set(get_info(name).config.memory_only)
    shared = {k: v for k, v in memory_only.items() if k not in get_info(name).config.memory_only}
    with torch.device("meta"):
        base = create(name, img_size=resolution, **shared)
        other = create(name, img_size=resolution, **memory_only)
    assert count_params(base) == count_params(other)
    assert count_macs_both(base, resolution) == count_macs_both(other, resolution)


def test_a_run_counts_a_model_once_for_its_memory_only_overrides():
    base = make_cell("revbifpn_s0", resolution=64, batch_size=2)
    kept = make_cell(
        "revbifpn_s0", resolution=64, batch_size=2, overrides={"recompute_neck": False}
    )
    wider = make_cell("revbifpn_s0", resolution=64, batch_size=2, overrides={"fc_features": 640})
    assert counts_key(kept) == counts_key(base) != counts_key(wider)
    assert kept.model_key != base.model_key  # the cell itself still names its variant
    context = RunContext()
    assert context.request(base, count=True, snapshot=False).counts
    counts = Counts(params=1, macs=2, macs_thop=3)
    context.took(base, Outcome(status.OK, counts=counts))
    assert not context.request(kept, count=True, snapshot=False).counts
    assert context.counts(kept) == counts
    assert context.request(wider, count=True, snapshot=False).counts


# One model of each family, full size (meta tensors cost no memory).
META_BUILDS = [
    "revbifpn_s0",
    "revcol_tiny",
    "rev_mvit_base",
    "vit_small_patch16_224",
    "tf_efficientnet_b0",
    "hrnet_w18_small",
    "tf_efficientdet_d0",
]


def _layout(model: torch.nn.Module) -> list:
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return [(n, t.shape, t.stride(), t.dtype, t.requires_grad, t.is_meta) for n, t in tensors] + [
        sorted(model.state_dict())
    ]


@pytest.mark.parametrize("name", META_BUILDS)
def test_a_meta_build_without_initialisers_has_the_same_tensors(name):
    from revbench.scenario import build_on_meta

    with torch.device("meta"):
        plain = create(name)
    assert _layout(build_on_meta(lambda: create(name))) == _layout(plain)


def test_only_meta_tensors_skip_their_initialisers():
    from revbench.scenario import build_on_meta

    def factory():
        table = torch.zeros(64, device="cpu").normal_().clamp_(-1, 1)  # values a model reads
        layer = torch.nn.Linear(4, 4)
        layer.register_buffer("table", table)
        return layer

    layer = build_on_meta(factory)
    assert layer.weight.is_meta and layer.table.device.type == "cpu"
    assert layer.table.abs().sum() > 0 and layer.table.abs().max() <= 1
