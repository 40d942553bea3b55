"""Fake outputs made directly for operators FakeTensor can only decompose in Python.

Batch norm, layer norm, hardswish, hardsigmoid, their backwards, GELU's backward and
bilinear upsampling have no meta kernel in C++: on a cache miss (every new shape, so
every layer at every batch size) FakeTensor runs their Python decomposition, 4-10 ms
each, a fifth of a traced RevBiFPN step. What a traced step needs of them is only their
outputs' layout: new tensors shaped and strided like an input, and small per-channel or
per-row vectors. `FastOutputs.call` makes those directly. Counting runs the same
operators on the meta device, whose kernels are the same decompositions
(`MetaFastOutputs`).

A fast answer is trusted for a layout only once FakeTensor's (or the meta device's) own
answer matched it: the first call of each signature (operator, and for every argument its
dtype, device kind, dimensions of size 1 and stride order, its length for a list of sizes,
or its value for other non-tensors) runs the slow path, compares every output's shape,
strides, dtype, offset and storage bytes with the fast one, and keeps the signature as
verified or refused. Inputs that are not dense, or whose size-1 dimensions are strided
otherwise than their order gives (a slice of a larger tensor), take the slow path always.
So the outputs, and with them every figure, are FakeTensor's own, to the byte.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


def _like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)


def _vector(length: int, dtype: torch.dtype, device) -> torch.Tensor:
    return torch.empty((length,), dtype=dtype, device=device)


def _unary(x):
    return _like(x)


def _unary_backward(grad_output, x):
    return _like(grad_output)


_OPMATH = {torch.float16: torch.float32, torch.bfloat16: torch.float32}  # what 16-bit computes in


def _batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps):
    # Training saves the batch's mean and inverse deviation per channel; eval saves none.
    # The meta kernel keeps both per channel either way, in float32 for 16-bit inputs.
    saved, dtype = (x.shape[1] if training else 0), x.dtype
    if x.is_meta:
        saved, dtype = x.shape[1], _OPMATH.get(x.dtype, x.dtype)
    return _like(x), _vector(saved, dtype, x.device), _vector(saved, dtype, x.device)


def _batch_norm_backward(
    grad_output, x, weight, running_mean, running_var, save_mean, save_invstd, train, eps, mask
):
    # The input's gradient comes whether asked for or not (the decomposition computes it).
    channels = x.shape[1]
    return (
        _like(grad_output),
        _vector(channels, weight.dtype, weight.device) if mask[1] else None,
        _vector(channels, weight.dtype, weight.device) if mask[2] else None,
    )


def _layer_norm(x, normalized_shape, weight, bias, eps):
    # The output is contiguous whatever the input's order; mean and inverse deviation keep
    # one value per normalised row (float32 for 16-bit inputs on the meta device).
    rows = (*x.shape[: x.dim() - len(normalized_shape)], *(1,) * len(normalized_shape))
    dtype = _OPMATH.get(x.dtype, x.dtype) if x.is_meta else x.dtype
    stats = (torch.empty(rows, dtype=dtype, device=x.device) for _ in range(2))
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), *stats


def _layer_norm_backward(grad_out, x, normalized_shape, mean, rstd, weight, bias, mask):
    # The input's gradient is strided as the output's gradient, or contiguous where the
    # decomposition computes in float32 and converts back (16-bit).
    if grad_out.dtype in _OPMATH:
        grad_in = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    else:
        grad_in = _like(grad_out)
    return (
        grad_in if mask[0] else None,
        _like(weight) if mask[1] and weight is not None else None,
        _like(bias) if mask[2] and bias is not None else None,
    )


def _upsample_bilinear2d(x, output_size, align_corners, scales_h=None, scales_w=None):
    # The decomposition's result is made contiguous in the input's suggested format.
    channels_last = _dense_order(x.shape, x.stride()) == (0, 2, 3, 1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    shape = (*x.shape[:2], *output_size)
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)


FAST: dict = {
    aten.hardswish.default: _unary,
    aten.hardsigmoid.default: _unary,
    aten.hardswish_backward.default: _unary_backward,
    aten.hardsigmoid_backward.default: _unary_backward,
    aten.native_batch_norm.default: _batch_norm,
    aten.native_batch_norm_backward.default: _batch_norm_backward,
    aten.upsample_bilinear2d.default: _upsample_bilinear2d,
    aten.native_layer_norm.default: _layer_norm,
    aten.native_layer_norm_backward.default: _layer_norm_backward,
    aten.gelu_backward.default: _unary_backward,
}


def _signature(func, args, kwargs) -> tuple | None:
    """What decides the outputs' layout, shapes aside; None where the fast path is not
    taken (keyword arguments, a tensor that is not dense or not in its order's strides,
    one neither fake nor on the meta device). A list of sizes counts by its length."""
    if kwargs:
        return None
    parts: list = [func]
    for arg in args:
        if isinstance(arg, torch.Tensor):
            if not (isinstance(arg, FakeTensor) or arg.is_meta) or arg.storage_offset():
                return None
            order = _dense_order(arg.shape, arg.stride())
            if order is None:
                return None
            ones = tuple(size == 1 for size in arg.shape)
            parts.append((arg.dtype, arg.is_meta, order, ones))
        elif arg is None or isinstance(arg, (bool, int, float)):
            parts.append(arg)
        elif isinstance(arg, (list, tuple)) and all(isinstance(a, bool) for a in arg):
            parts.append(tuple(arg))
        elif isinstance(arg, (list, tuple)) and all(type(a) is int for a in arg):
            parts.append(("sizes", len(arg)))
        else:
            return None
    # Operands of a backward taken with different layouts: FakeTensor's path.
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if func in _SAME_LAYOUT and (
        tensors[0].shape != tensors[1].shape or tensors[0].stride() != tensors[1].stride()
    ):
        return None
    return tuple(parts)


def _dense_order(shape, stride) -> tuple | None:
    """The dimensions from outermost to innermost of a dense tensor without dimensions of
    size 0, ties (a dimension of size 1 strides like its inner neighbour) broken by
    position; None for any other. Every stride, a size-1 dimension's too, must be the one
    this order gives: then order and sizes decide the strides."""
    if 0 in shape:
        return None
    order = sorted(range(len(shape)), key=lambda d: (-stride[d], d))
    expected = 1
    for d in reversed(order):
        if stride[d] != expected:
            return None
        expected *= shape[d]
    return tuple(order)


_SAME_LAYOUT = {
    aten.gelu_backward.default,
    aten.hardswish_backward.default,
    aten.hardsigmoid_backward.default,
    aten.native_batch_norm_backward.default,
}


def _layout(out) -> tuple:
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return tuple(
        None
        if t is None
        else (
            tuple(t.shape),
            t.stride(),
            t.dtype,
            t.device,
            t.storage_offset(),
            t.untyped_storage().nbytes(),
        )
        for t in outs
    )


class FastOutputs:
    """The verified fast paths of one process (kept across estimators: a worker verifies
    each signature once)."""

    def __init__(self) -> None:
        self.verified: set[tuple] = set()
        self.refused: set[tuple] = set()

    def call(self, func, args, kwargs) -> object:
        fast: Callable | None = FAST.get(func)
        key = _signature(func, args, kwargs) if fast is not None else None
        if key is None:
            return func(*args, **(kwargs or {}))
        if key in self.verified:
            return fast(*args)
        out = func(*args)
        if key not in self.refused:
            inputs = {a.untyped_storage()._cdata for a in args if isinstance(a, torch.Tensor)}
            outs = out if isinstance(out, (tuple, list)) else (out,)
            aliased = any(t is not None and t.untyped_storage()._cdata in inputs for t in outs)
            same = not aliased and _layout(fast(*args)) == _layout(out)
            (self.verified if same else self.refused).add(key)
        return out


FAST_OUTPUTS = FastOutputs()


class MetaFastOutputs(TorchDispatchMode):
    """The fast outputs on the meta device, whose kernels for these operators are the same
    Python decompositions (a RevBiFPN-S0 forward's hardswish alone: 0.9 s). Entered outside
    a flop counter, so that the counter still sees every operator first."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return FAST_OUTPUTS.call(func, args, kwargs)  # the others run as they are
