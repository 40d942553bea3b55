"""Parameter and MAC counts.

* `count_params`: exact, from the module (cheap on the meta device).
* `count_macs`: torch.utils.flop_counter at batch 1, FLOPs / 2. It sees operations at the
  dispatcher, so functional matmuls and scaled_dot_product_attention count too (thop is
  blind to them). Runs on the meta device: full-size models cost nothing.
* `count_macs_both`: the two above from one forward (what a run counts with).
* `count_macs_thop`: thop with revbench's rules for the convention the RevBiFPN paper
  published its MACs in (an older thop): conv = output elements x (C_in/groups x k^2, +1
  with a bias); BatchNorm = 2 x input elements; bilinear upsample = 11 x output elements;
  Linear = output elements x in_features; zero for activations, additions, pooling and
  the squeeze-excite multiply. thop 0.1.x itself counts BatchNorm differently and drops
  the conv bias term, so every module type that matters gets an explicit rule here.
  Every rule reads shapes only: it counts on the meta device as on real tensors.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .methods.fake_fastpaths import MetaFastOutputs


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def input_shape(model: nn.Module, resolution: int) -> tuple[int, int]:
    """(height, width) of the model's input at `resolution`: square unless the model says
    otherwise with `image_shape(resolution)` (detectors: 1333x800 at 800)."""
    shape = getattr(model, "image_shape", None)
    return shape(resolution) if shape is not None else (resolution, resolution)


def count_macs(model: nn.Module, resolution: int, *, in_chans: int = 3) -> int:
    """Forward MACs at batch 1 in eval mode (on the model's device; meta is fine)."""
    return _counted_forward(model, resolution, in_chans=in_chans, thop=False)[0]


def count_macs_both(model: nn.Module, resolution: int) -> tuple[int, int]:
    """(`count_macs`, `count_macs_thop`) from one forward: the flop counter sees the
    operators at the dispatcher while thop's hooks read the modules' shapes, so one pass
    gives both (thop's own bookkeeping adds and copies, which the flop counter does not
    count)."""
    return _counted_forward(model, resolution, in_chans=3, thop=True)


def _counted_forward(
    model: nn.Module, resolution: int, *, in_chans: int, thop: bool
) -> tuple[int, int | None]:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_chans, *input_shape(model, resolution), device=device)
    counter = FlopCounterMode(display=False)
    macs_thop = None
    try:
        with torch.no_grad(), _fast_outputs(device), counter:
            if thop:
                macs_thop = _thop_profile(model, x)
            else:
                model(x)
    finally:
        model.train(was_training)
        if thop:
            _strip_thop_buffers(model)
    return counter.get_total_flops() // 2, macs_thop


# ------------------------------------------------------------------ thop, published rules


def _add(module: nn.Module, ops: float) -> None:
    module.total_ops += torch.DoubleTensor([int(ops)])


def _conv_rule(m: nn.modules.conv._ConvNd, inputs, output) -> None:
    per_output = m.in_channels // m.groups * math.prod(m.kernel_size) + (m.bias is not None)
    _add(m, output.numel() * per_output)


def _batchnorm_rule(m: nn.Module, inputs, output) -> None:
    _add(m, 2 * inputs[0].numel())


def _linear_rule(m: nn.Linear, inputs, output) -> None:
    _add(m, output.numel() * m.in_features)


def _upsample_rule(m: nn.Upsample, inputs, output) -> None:
    per_output = {"bilinear": 11, "linear": 5, "bicubic": 259, "trilinear": 31}.get(m.mode, 0)
    _add(m, output.numel() * per_output)


def _zero_rule(m: nn.Module, inputs, output) -> None:
    _add(m, 0)


ZERO_COST = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.SiLU,
    nn.Sigmoid,
    nn.GELU,
    nn.Identity,
    nn.Dropout,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.MaxPool2d,
    nn.AdaptiveMaxPool2d,
    nn.PixelUnshuffle,
    nn.PixelShuffle,
)

THOP_PUBLISHED_RULES: dict[type, Callable] = {
    nn.Conv1d: _conv_rule,
    nn.Conv2d: _conv_rule,
    nn.Conv3d: _conv_rule,
    nn.BatchNorm1d: _batchnorm_rule,
    nn.BatchNorm2d: _batchnorm_rule,
    nn.BatchNorm3d: _batchnorm_rule,
    nn.SyncBatchNorm: _batchnorm_rule,
    nn.Linear: _linear_rule,
    nn.Upsample: _upsample_rule,
    **{t: _zero_rule for t in ZERO_COST},
}


def _fast_outputs(device: torch.device):
    """On the meta device, the estimator's verified fast outputs for the operators whose
    meta kernels are Python decompositions (batch norm, hardswish, hardsigmoid, bilinear
    upsampling): the same shapes, in a fraction of the time (RevBiFPN-S0's count 1.8-2.2
    to 1.1-1.6 s; as fast or a little faster for ResNet-50, EfficientNet-B0, HRNet-W18
    and RevCol-T, whose eval-mode batch norms they cover too)."""
    return MetaFastOutputs() if device.type == "meta" else contextlib.nullcontext()


def count_macs_thop(model: nn.Module, resolution: int) -> int:
    """MACs at batch 1 under the published thop convention, on the model's device: the
    meta device counts any size for nothing (every rule reads shapes, never values), as
    real CPU tensors count it."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, *input_shape(model, resolution), device=device)
    try:
        with torch.no_grad(), _fast_outputs(device):
            return _thop_profile(model, x)
    finally:
        model.train(was_training)
        _strip_thop_buffers(model)


def _thop_profile(model: nn.Module, x: torch.Tensor) -> int:
    import thop

    with _thop_counting_macs_only():
        macs, _ = thop.profile(model, inputs=(x,), custom_ops=THOP_PUBLISHED_RULES, verbose=False)
    return int(macs)


@contextlib.contextmanager
def _thop_counting_macs_only():
    """thop's profile hooks a parameter count on every module it has a rule for, besides
    the rule: a float64 tensor per parameter, twice, at every call (RevBiFPN-S0: 1,386
    calls, 0.4-0.6 s of its 1.8 s count). Its total is thrown away (`count_params` counts
    the parameters exactly), so for the call a hook that counts nothing takes its place
    (it is looked up in thop's profile module when the hooks are added)."""
    profile_module = sys.modules.get("thop.profile")
    original = getattr(profile_module, "count_parameters", None)
    if original is None:  # another thop layout: its hooks as they are
        yield
        return
    profile_module.count_parameters = _no_parameter_count
    try:
        yield
    finally:
        profile_module.count_parameters = original


def _no_parameter_count(module: nn.Module, inputs, output) -> None:
    pass


def _strip_thop_buffers(model: nn.Module) -> None:
    # thop leaves total_ops/total_params buffers on every module; they would otherwise
    # show up in state_dict and break strict checkpoint loading.
    for m in model.modules():
        for name in ("total_ops", "total_params"):
            if name in m._buffers:
                del m._buffers[name]
