"""RevBiFPN (models/revbifpn.py): published MACs, layout, fp32 and autocast numerics,
backbone use and checkpoints, on the real S0 (64 px, batch 2, CPU) or a narrow one.

The engine guarantees (gradients, replay, BatchNorm once, modes, published parameter
counts of S0-S6, memory) are checked for every size in tests/test_model_contract.py.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from revbench.counting import count_macs_thop
from revbench.models import ResolutionError, create, get_info, hub
from revbench.models import revbifpn as rb

RES = 64  # smallest side where every scale is at least 2x2 (BatchNorm needs >1 value)
NARROW = dict(channels=(16,) * 4, head_channels=(16,) * 4, fc_features=16, img_size=RES)


pytestmark = pytest.mark.usefixtures("one_thread")


def _s0(**overrides) -> rb.RevBiFPN:
    torch.manual_seed(0)
    return create("revbifpn_s0", img_size=RES, **overrides)


def _step(
    model: nn.Module, mode: str, x: torch.Tensor, autocast: bool = False, seed: int = 1
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """One training forward/backward of a copy of `model` in `mode`; same RNG draws."""
    model = copy.deepcopy(model).set_mode(mode).train()
    x = x.clone().requires_grad_()
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(x)
    loss = out.float().square().mean()
    loss.backward()
    return model, x.grad, loss.detach()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _param_errors(model: nn.Module, ref: nn.Module) -> dict[str, float]:
    refs = dict(ref.named_parameters())
    return {n: _rel(p.grad, refs[n].grad) for n, p in model.named_parameters()}


# ------------------------------------------------------------------- counts, inputs


# S0 and S6 span the family (width 1 to 20/3, 2 to 5 extension stages); every size's
# parameter count is checked on the meta device by the contract tests. thop needs real
# tensors: all seven would take half a minute.
@pytest.mark.parametrize("name", ["revbifpn_s0", "revbifpn_s6"])
def test_macs_match_published(name):
    info = get_info(name)
    model = create(name)
    assert count_macs_thop(model, info.native_resolution) == info.published_macs
    # thop's temporary buffers must not leak into the checkpoint layout
    assert not any("total_ops" in k for k in model.state_dict())


def test_unknown_override_names_valid_keys():
    with pytest.raises(ValueError, match="unknown override.*depth.*valid:.*num_ext_layers"):
        create("revbifpn_s0", depth=3)
    with pytest.raises(ValueError, match="features_only"):
        create("revbifpn_s0", features_only="neck")
    with pytest.raises(ValueError, match="one entry per scale"):
        create("revbifpn_s0", se_ratios=(0.25, 0.25))
    with pytest.raises(ValueError, match="mode"):
        create("revbifpn_s0", mode="fast")


def test_resolution_errors_name_nearest_sizes():
    with pytest.raises(ResolutionError, match="img_size 100 .* 96 or 128"):
        create("revbifpn_s0", img_size=100)
    # The multiple is the coarsest scale's stride: 16 with three scales.
    three = dict(channels=(48, 64, 80), head_channels=(48, 64, 128), dw_kernels=(3, 5, 5))
    three |= dict(dw_kernel_pads=(0, 0, 0), expand_ratios=(1, 1, 2), se_ratios=(0.25,) * 3)
    three |= dict(neck_expand_ratios=(1, 2, 2), neck_se_ratios=(0.25,) * 3)
    get_info("revbifpn_s0").check_resolution(48, three)
    model = create("revbifpn_s0", **NARROW).eval()
    # The network takes any multiple of 32, not only the side it was built for.
    with pytest.raises(ResolutionError, match="input width 80 .* 64 or 96"):
        model(torch.zeros(1, 3, 64, 80))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.zeros(1, 1, 64, 64))


def test_num_classes_is_the_head_and_trains():
    # It had no num_classes: a 10-class cell drew targets from 1000 classes and failed
    # with "Target 954 is out of bounds".
    model = create("revbifpn_s0", **NARROW, num_classes=10)
    assert model.num_classes == 10
    logits = model(torch.randn(2, 3, RES, RES))
    assert logits.shape == (2, 10)
    F.cross_entropy(logits, torch.randint(0, model.num_classes, (2,))).backward()


# ------------------------------------------------------------------ engine guarantees


def test_gradients_close_to_vanilla_in_float32():
    # fp32: the rebuilt inputs carry the rounding of 15 inversions (1.2e-5 relative at the
    # stack input for S0 at init, measured), so the first blocks' gradients, the last ones
    # the backward walk reaches, differ from autograd's by up to ~1e-4 relative (measured
    # 4e-5 to 1.04e-4 over four seeds); the median parameter stays below 1e-5. The float64
    # contract test shows the difference is rounding; an algorithmic slip is off by 1e-2.
    model = _s0(drop_path_rate=0.2)
    x = torch.randn(2, 3, RES, RES)
    ref, dx_ref, loss_ref = _step(model, "vanilla", x)
    got, dx, loss = _step(model, "reversible", x)
    assert torch.equal(loss, loss_ref)
    assert _rel(dx, dx_ref) < 1e-4
    errors = _param_errors(got, ref)
    assert max(errors.values()) < 5e-4, max(errors.items(), key=lambda kv: kv[1])
    assert sorted(errors.values())[len(errors) // 2] < 1e-5  # the median parameter


def test_autocast_replayed_in_recompute():
    model = _s0(drop_path_rate=0.2)
    x = torch.randn(2, 3, RES, RES)
    dtypes: list[tuple[bool, torch.dtype]] = []
    conv = model.rev_stack[1].rev_transform_0.f.xform_0_1.dw_conv.conv
    hook = conv.register_forward_hook(
        lambda m, i, o: dtypes.append((torch.is_grad_enabled(), o.dtype))
    )
    try:
        ref, dx_ref, _ = _step(model, "vanilla", x, autocast=True)
        dtypes.clear()
        got, dx, _ = _step(model, "reversible", x, autocast=True)
    finally:
        hook.remove()
    # forward (no grad, inside the engine) and recompute (grad) both ran in bf16
    assert [d for _, d in dtypes] == [torch.bfloat16] * 2
    assert [g for g, _ in dtypes] == [False, True]
    # bf16 noise is 1e-2 scale; without the replay the input gradient is off by ~0.25 and
    # the median parameter by ~2e-2 (measured): these bounds would catch that.
    assert _rel(dx, dx_ref) < 0.05
    errors = sorted(_param_errors(got, ref).values())
    assert errors[len(errors) // 2] < 1e-3


def test_streams_keep_input_dtype_under_autocast():
    # New scales are cast to the stream dtype, so no stream turns bf16 (lossy inversion).
    model = _s0(features_only="stack").train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = model(torch.randn(2, 3, RES, RES, requires_grad=True))
    assert [f.dtype for f in feats] == [torch.float32] * 4


def test_inverse_rebuilds_inputs():
    model = _s0().double().eval()
    x = model._repeat_channels(torch.randn(2, 3, RES, RES, dtype=torch.float64))
    with torch.no_grad():
        ys = model.rev_stack(x)
        assert len(ys) == 4
        (x_rebuilt,) = model.rev_stack.inverse(*ys)
        torch.testing.assert_close(x_rebuilt, x, rtol=1e-10, atol=1e-10)
        # a silo that adds a scale drops it again on inverse
        silo = model.rev_stack[3]
        assert isinstance(silo, rb.RevSilo) and (silo.n_in, silo.n_out) == (1, 2)
        xs = model.rev_stack[2](*model.rev_stack[1](*model.rev_stack[0](x)))
        (back,) = silo.inverse(*silo(*xs))
        torch.testing.assert_close(back, xs[0], rtol=1e-10, atol=1e-10)


def test_space_to_depth_matches_published_order():
    # Output channel (r * 4 + s) * C + c holds pixel (4h + r, 4w + s) of channel c.
    stem = rb.SpaceToDepth(4)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    (y,) = stem(x)
    assert y.shape == (2, 48, 2, 2)
    for r, s, c in [(0, 0, 0), (1, 2, 2), (3, 3, 1)]:
        torch.testing.assert_close(y[:, (r * 4 + s) * 3 + c], x[:, c, r::4, s::4])
    torch.testing.assert_close(stem.inverse(y)[0], x)


def test_channel_repetition():
    model = create("revbifpn_s1", img_size=RES)  # C_0 = 64: 4 channels = RGB + R
    assert model.cfg.in_chans == 4
    x = torch.randn(1, 3, 8, 8)
    rep = model._repeat_channels(x)
    torch.testing.assert_close(rep, torch.cat([x, x[:, :1]], dim=1))


# ------------------------------------------------------------------------- backbone


def test_features_only_neck_maps():
    model = _s0(features_only=True)
    assert get_info("revbifpn_s0").task_for({"features_only": True}) == "features"
    assert model.head is None and model.num_classes == 0  # timm's "no classifier"
    assert not any(k.startswith("head.") for k in model.state_dict())
    assert [f["num_chs"] for f in model.feature_info] == [48, 64, 128, 320]
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
    x = torch.randn(2, 3, 96, 128, requires_grad=True)
    feats = model(x)
    assert isinstance(feats, list)
    for f, info in zip(feats, model.feature_info):
        assert f.shape == (2, info["num_chs"], 96 // info["reduction"], 128 // info["reduction"])
    sum(f.sum() for f in feats).backward()  # trains as a backbone, reversible mode
    assert x.grad is not None and all(p.grad is not None for p in model.parameters())


def test_features_only_stack_outputs():
    model = _s0(features_only="stack")
    assert not any("recomp_op" in k or k.startswith("head.") for k in model.state_dict())
    assert [f["num_chs"] for f in model.feature_info] == [48, 64, 80, 160]
    feats = model(torch.randn(1, 3, RES, RES))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (48, 16, 16),
        (64, 8, 8),
        (80, 4, 4),
        (160, 2, 2),
    ]


# ----------------------------------------------------------------- checkpoint layout


def _mbconv_keys(prefix: str, expand: float, se: float) -> list[str]:
    """An MBConv's tensors, from the published layout description."""
    convs = (["exp_conv"] if expand != 1 else []) + ["dw_conv", "project_conv"]
    keys = []
    for c in convs:
        keys.append(f"{prefix}.{c}.conv.weight")
        keys += [
            f"{prefix}.{c}.norm.{b}"
            for b in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        ]
    if se > 0:
        keys += [f"{prefix}.se.se.{i}.{w}" for i in (1, 3) for w in ("weight", "bias")]
    return keys


def _published_keys(num_ext_layers: int) -> list[str]:
    """Every state_dict key of a released RevBiFPN, written from the layout rules."""
    expand, se = (1, 1, 2, 2), (0.25, 0.25, 0.125, 0.0)
    neck_expand, neck_se = (1, 2, 2, 2), (0.25, 0.25, 0.125, 0.125)
    keys: list[str] = []
    n = 1  # rev_stack.0 is the parameterless stem
    for stage in range(3 + num_ext_layers):
        scales = min(stage + 1, 4)
        for _ in range(2):
            for s in range(scales):
                for fg in "fg":
                    p = f"rev_stack.{n}.rev_transform_{s}.{fg}.xform_0_1"
                    keys += _mbconv_keys(p, expand[s], se[s])
            n += 1
        outs = min(scales + 1, 4)
        for i in range(scales):  # down: source i, target j > i
            for j in range(i + 1, outs):
                keys += _mbconv_keys(f"rev_stack.{n}.f.xform_{i}_{j}", expand[i], se[i])
        for src in range(outs):  # up: source > target, indexed from the coarsest scale
            for tgt in range(src):
                p = f"rev_stack.{n}.g.xform_{outs - 1 - src}_{outs - 1 - tgt}.0"
                keys += _mbconv_keys(p, expand[tgt], se[tgt])
        n += 1
    for s in range(4):
        p = f"rev_stack.recomp_op.recomp_transform_{s}"
        keys += _mbconv_keys(p, neck_expand[s], neck_se[s])
    for h in range(3):
        keys += _mbconv_keys(f"head.pyramid_heads.{h}", neck_expand[h], neck_se[h])
    keys += ["head.final_conv.conv.weight"]
    keys += [
        f"head.final_conv.norm.{b}"
        for b in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    ]
    return keys + ["head.fc.weight", "head.fc.bias"]


@pytest.mark.parametrize("name, num_ext_layers", [("revbifpn_s0", 2), ("revbifpn_s6", 5)])
def test_state_dict_matches_published_layout(name, num_ext_layers):
    expected = _published_keys(num_ext_layers)
    assert len(expected) == len(set(expected))
    with torch.device("meta"):
        keys = list(create(name).state_dict())
    assert len(keys) == len(expected)
    assert set(keys) == set(expected)


# ---------------------------------------------------------------------- pretrained


def _checkpoint(tmp_path: Path, file_name: str) -> tuple[Path, dict]:
    torch.manual_seed(3)
    state = create("revbifpn_s0", **NARROW).state_dict()
    path = tmp_path / "src" / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path, state


def _assert_loaded(model: nn.Module, state: dict) -> None:
    got = model.state_dict()
    assert got and got.keys() <= state.keys()
    for key, value in got.items():
        assert torch.equal(value, state[key]), key


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pretrained_local_file(tmp_path):
    path, state = _checkpoint(tmp_path, "my_run.pth")  # not a published name: no hash
    _assert_loaded(create("revbifpn_s0", **NARROW, pretrained=path), state)
    # a backbone loads the same file without its head
    backbone = create("revbifpn_s0", **NARROW, pretrained=str(path), features_only=True)
    _assert_loaded(backbone, state)
    with pytest.raises(RuntimeError, match="size mismatch"):
        create("revbifpn_s0", **NARROW, pretrained=path, num_classes=10)  # strict
    with pytest.raises(ValueError, match="pretrained=True is invalid for revvit_large.*"):
        create("revvit_large", pretrained=True)  # no published weights


def test_pretrained_local_published_name_is_verified(tmp_path):
    path, _ = _checkpoint(tmp_path, "revbifpn_s0.pth.tar")
    with pytest.raises(hub.ChecksumError, match="revbifpn_s0.pth.tar: SHA-256"):
        create("revbifpn_s0", **NARROW, pretrained=path)
    assert path.is_file()  # the user's own file is never deleted


def test_pretrained_check_hash_false_loads_own_file_under_published_name(tmp_path):
    path, state = _checkpoint(tmp_path, "revbifpn_s0.pth.tar")
    _assert_loaded(create("revbifpn_s0", **NARROW, pretrained=path, check_hash=False), state)
    wrapped = tmp_path / "wrapped.pth"  # a training script's container
    torch.save({"state_dict": state, "epoch": 3}, wrapped)
    _assert_loaded(create("revbifpn_s0", **NARROW, pretrained=wrapped), state)


def test_pretrained_download_verified_and_cached(tmp_path, monkeypatch):
    path, state = _checkpoint(tmp_path, "revbifpn_s0.pth.tar")
    cache = tmp_path / "cache"
    monkeypatch.setenv("REVBENCH_CACHE", str(cache))
    monkeypatch.setitem(rb.PUBLISHED_SHA256, "revbifpn_s0.pth.tar", _digest(path))
    _assert_loaded(create("revbifpn_s0", **NARROW, pretrained=path.as_uri()), state)
    assert [p.name for p in cache.iterdir()] == ["revbifpn_s0.pth.tar"]
    # a second load uses the verified cache entry
    monkeypatch.setattr(hub, "_download", lambda url, dst: pytest.fail("downloaded again"))
    _assert_loaded(create("revbifpn_s0", **NARROW, pretrained=path.as_uri()), state)


def test_pretrained_corrupted_download_is_deleted(tmp_path, monkeypatch):
    path, _ = _checkpoint(tmp_path, "revbifpn_s0.pth.tar")
    cache = tmp_path / "cache"
    monkeypatch.setenv("REVBENCH_CACHE", str(cache))
    monkeypatch.setitem(rb.PUBLISHED_SHA256, "revbifpn_s0.pth.tar", "0" * 64)
    with pytest.raises(hub.ChecksumError, match="differs from the published 0000.*deleted"):
        create("revbifpn_s0", **NARROW, pretrained=path.as_uri())
    assert list(cache.iterdir()) == []


def test_pretrained_true_downloads_published_url(tmp_path, monkeypatch):
    path, state = _checkpoint(tmp_path, "revbifpn_s0.pth.tar")
    monkeypatch.setenv("REVBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(rb.PUBLISHED_SHA256, "revbifpn_s0.pth.tar", _digest(path))
    urls = []

    def fake_download(url: str, dst: Path) -> None:
        urls.append(url)
        dst.write_bytes(path.read_bytes())

    monkeypatch.setattr(hub, "_download", fake_download)
    _assert_loaded(create("revbifpn_s0", **NARROW, pretrained=True), state)
    assert urls == [
        "https://cerebras-public.s3.us-west-2.amazonaws.com/revbifpn/revbifpn_s0.pth.tar"
    ]


# ------------------------------------------------------------------- recompute_neck

WIDTHS = {k: v for k, v in NARROW.items() if k != "img_size"}


@pytest.mark.parametrize("mode", ["reversible", "checkpoint"])
def test_neck_kept_or_recomputed_gives_the_same_step(mode):
    # recompute_neck=False only changes what autograd keeps: the same weights give the same
    # loss, input gradient, parameter gradients and BatchNorm statistics, bit for bit.
    recomputed = _s0(drop_path_rate=0.2, **WIDTHS)
    kept = _s0(drop_path_rate=0.2, recompute_neck=False, **WIDTHS)
    kept.load_state_dict(recomputed.state_dict())
    x = torch.randn(2, 3, RES, RES)
    ref, dx_ref, loss_ref = _step(recomputed, mode, x)
    got, dx, loss = _step(kept, mode, x)
    assert torch.equal(loss, loss_ref)
    assert torch.equal(dx, dx_ref)
    refs = dict(ref.named_parameters())
    for name, p in got.named_parameters():
        assert torch.equal(p.grad, refs[name].grad), name
    for (name, a), b in zip(got.named_buffers(), ref.buffers()):
        assert torch.equal(a, b), name


def test_neck_kept_costs_more_memory():
    from revbench.methods.estimate import estimate_memory

    # A shallow stack under a wide neck, so the step's peak falls where the neck's
    # activations are alive (at S0's own widths and 64 px the optimizer step is the peak).
    shape = dict(
        channels=(16, 16, 16, 32),
        head_channels=(64,) * 4,
        fc_features=32,
        blocks_per_stage=1,
        num_ext_layers=0,
    )

    def activations(**overrides) -> int:
        return estimate_memory(
            "revbifpn_s0", batch_size=4, resolution=RES, **shape, **overrides
        ).activation_bytes

    assert activations(recompute_neck=False) > activations()


def test_recompute_neck_must_be_a_bool():
    with pytest.raises(ValueError, match=r"recompute_neck='no' is invalid; valid: True, False"):
        create("revbifpn_s0", recompute_neck="no")
