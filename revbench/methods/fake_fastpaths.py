"""Fake outputs made without FakeTensorMode's dispatch, to the byte what it makes.

Fast paths. Batch norm (training and eval), layer norm, hardswish, hardsigmoid, their
backwards, GELU's backward and bilinear upsampling have no meta kernel in C++: on a cache
miss (every new shape, so every layer at every batch size) FakeTensor runs their Python
decomposition, 4-10 ms each, a fifth of a traced RevBiFPN step. What a traced step needs
of them is only their outputs' layout: new tensors shaped and strided like an input, and
small per-channel or per-row vectors. `FastOutputs.call` makes those directly. Counting
runs the same operators on the meta device, whose kernels are the same decompositions
(`MetaFastOutputs`).

A fast answer is trusted for a layout only once FakeTensor's (or the meta device's) own
answer matched it: the first call of each signature (operator, and for every argument its
dtype, device kind, dimensions of size 1 and stride order, its length for a list of sizes,
or its value for other non-tensors) runs the slow path, compares every output's shape,
strides, dtype, offset, storage bytes, grad flag and dispatch keys with the fast one, and
keeps the signature as verified or refused. Inputs that are not dense, or whose size-1
dimensions are strided otherwise than their order gives (a slice of a larger tensor), take
the slow path always.

Remembered outputs. Every other operator on fake tensors goes through FakeTensor's cache,
whose key (every input's full metadata, built in Python) and output cost 60-150 us a call:
a RevBiFPN-S0 step at its second batch size made 8,650 hits of its 9,270 calls.
`FastOutputs.call_fake` keeps its own record per operator and inputs' layouts (sizes,
strides, offset, dtype, device, grad flag, and every other argument by type and value) of
what FakeTensor answered: a new tensor, a view of the one input, or an input returned in
place. On the next call with inputs laid out alike it makes the same outputs as
FakeTensor's cache makes them (an empty meta tensor of the layout, wrapped), in about
20 us. A record is kept only where the outputs made from it match FakeTensor's own on
first sight, for the operators FakeTensor's cache answers too (not for constants, real
tensors, outputs sized by values or operators resizing in place).

So the outputs, and with them every figure, are FakeTensor's own, to the byte.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


def _empty(
    like: torch.Tensor, shape, dtype: torch.dtype, stride=None, fmt=torch.contiguous_format
) -> torch.Tensor:
    """A new tensor on `like`'s device: an empty meta tensor, wrapped as a fake tensor of
    `like`'s mode and device where `like` is fake (as FakeTensor makes a cached output,
    without a trip through the fake mode's dispatch)."""
    with torch._C._DisableTorchDispatch():
        if stride is None:
            meta = torch.empty(shape, dtype=dtype, device="meta", memory_format=fmt)
        else:
            meta = torch.empty_strided(shape, stride, dtype=dtype, device="meta")
    if isinstance(like, FakeTensor):
        return FakeTensor(like.fake_mode, meta, like.fake_device)
    return meta


def _like(t: torch.Tensor) -> torch.Tensor:
    return _empty(t, t.shape, t.dtype, t.stride())


def _vector(length: int, dtype: torch.dtype, like: torch.Tensor) -> torch.Tensor:
    return _empty(like, (length,), dtype)


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
    return _like(x), _vector(saved, dtype, x), _vector(saved, dtype, x)


def _batch_norm_eval(x, weight, bias, running_mean, running_var, momentum, eps):
    # Batch norm in eval mode (counting runs models so): the running statistics normalise.
    return _batch_norm(x, weight, bias, running_mean, running_var, False, momentum, eps)


def _batch_norm_backward(
    grad_output, x, weight, running_mean, running_var, save_mean, save_invstd, train, eps, mask
):
    # The input's gradient comes whether asked for or not (the decomposition computes it).
    channels = x.shape[1]
    return (
        _like(grad_output),
        _vector(channels, weight.dtype, weight) if mask[1] else None,
        _vector(channels, weight.dtype, weight) if mask[2] else None,
    )


def _layer_norm(x, normalized_shape, weight, bias, eps):
    # The output is contiguous whatever the input's order; mean and inverse deviation keep
    # one value per normalised row (float32 for 16-bit inputs on the meta device).
    rows = (*x.shape[: x.dim() - len(normalized_shape)], *(1,) * len(normalized_shape))
    dtype = _OPMATH.get(x.dtype, x.dtype) if x.is_meta else x.dtype
    stats = (_empty(x, rows, dtype) for _ in range(2))
    return _empty(x, x.shape, x.dtype), *stats


def _layer_norm_backward(grad_out, x, normalized_shape, mean, rstd, weight, bias, mask):
    # The input's gradient is strided as the output's gradient, or contiguous where the
    # decomposition computes in float32 and converts back (16-bit).
    if grad_out.dtype in _OPMATH:
        grad_in = _empty(x, x.shape, x.dtype)
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
    return _empty(x, shape, x.dtype, fmt=fmt)


FAST: dict = {
    aten.hardswish.default: _unary,
    aten.hardsigmoid.default: _unary,
    aten.hardswish_backward.default: _unary_backward,
    aten.hardsigmoid_backward.default: _unary_backward,
    aten.native_batch_norm.default: _batch_norm,
    aten._native_batch_norm_legit_no_training.default: _batch_norm_eval,
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


# What FakeTensor's cache never answers, so neither does `FastOutputs.call_fake`: outputs
# that depend on values, operators that change a tensor's sizes in place, constants lifted
# into fake tensors, prims' as_strided; views that may or may not alias
# (CompositeImplicitAutograd).
_UNREMEMBERED_TAGS = {
    torch.Tag.data_dependent_output,
    torch.Tag.dynamic_output_shape,
    torch.Tag.inplace_view,
}
_UNREMEMBERED = {
    aten.lift_fresh.default,
    aten.lift_fresh_copy.default,
    torch.ops.prims.as_strided.default,
}
_REMEMBERABLE: dict = {}  # operator -> whether its outputs may be remembered


def _rememberable(func) -> bool:
    known = _REMEMBERABLE.get(func)
    if known is None:
        known = _REMEMBERABLE[func] = (
            isinstance(func, torch._ops.OpOverload)
            and func.namespace in ("aten", "prims")
            and func not in _UNREMEMBERED
            and not _UNREMEMBERED_TAGS.intersection(func.tags)
            and not (
                func.is_view
                and torch._C._dispatch_has_kernel_for_dispatch_key(
                    func.name(), torch._C.DispatchKey.CompositeImplicitAutograd
                )
            )
        )
    return known


_PLAIN = (bool, int, float, str, torch.dtype, torch.device, torch.layout, torch.memory_format)


def _describe(value, parts: list, inputs: list) -> bool:
    """Appends to `parts` what of `value` (an operator's arguments or keyword arguments, or
    one of them) can decide its outputs, and its fake tensors to `inputs`: a tensor by its
    sizes, strides, offset, dtype, device and whether it requires grad; a plain value by
    its type and value. False for anything else (a real tensor, a constant or sparse fake
    tensor, one of another fake mode, a symbolic size, a callable)."""
    if isinstance(value, FakeTensor):
        if (
            value.constant is not None
            or value.is_sparse
            or (inputs and value.fake_mode is not inputs[0].fake_mode)
        ):
            return False
        parts.append(
            (
                value.shape,
                value.stride(),
                value.storage_offset(),
                value.dtype,
                value.fake_device,
                value.requires_grad,
            )
        )
        inputs.append(value)
        return True
    kind = type(value)
    if kind is list or kind is tuple:
        parts.append((kind, len(value)))
        return all(_describe(v, parts, inputs) for v in value)
    if kind is dict:
        for name, v in value.items():
            parts.append(name)
            if not _describe(v, parts, inputs):
                return False
        return True
    if value is None or isinstance(value, _PLAIN):
        parts.append((kind, value))  # 1, 1.0 and True are equal, and differ here
        return True
    return False


def _recipe(func, inputs: list, out, mode) -> tuple | None:
    """How to make `out` again for inputs laid out alike: its kind ("none" for an operator
    that returns nothing, "tensor", or the tuple or list type), and per output None,
    ("input", i) for input i returned as it is (in place), ("view", layout) for a view of
    the operator's one input, ("new", layout) for a tensor with a storage of its own. None
    for any other outputs (not fake tensors of `mode`, constants, a storage shared in
    another way)."""
    if out is None:
        return "none", ()
    if isinstance(out, FakeTensor):
        outs, kind = (out,), "tensor"
    elif type(out) in (tuple, list):
        outs, kind = out, type(out)
    else:
        return None
    read = {t.untyped_storage()._cdata for t in inputs}
    fresh: set[int] = set()
    made: list = []
    for t in outs:
        if t is None:
            made.append(None)
            continue
        if not isinstance(t, FakeTensor) or t.fake_mode is not mode or t.constant is not None:
            return None
        same = next((i for i, a in enumerate(inputs) if a is t), None)
        if same is not None:
            made.append(("input", same))
            continue
        layout = (tuple(t.shape), t.stride(), t.storage_offset(), t.dtype, t.fake_device)
        storage = t.untyped_storage()._cdata
        if storage in read:
            if not func.is_view or len(inputs) != 1:
                return None
            made.append(("view", layout + (t.requires_grad,)))
        elif storage in fresh:
            return None
        else:
            fresh.add(storage)
            made.append(("new", layout + (t.requires_grad,)))
    return kind, tuple(made)


def _made(recipe: tuple, inputs: list, mode) -> object:
    """The outputs `recipe` describes, made as FakeTensor makes a cached operator's: an
    empty meta tensor of the layout (set to the input's storage for a view), wrapped."""
    kind, outputs = recipe
    if kind == "none":
        return None
    made: list = []
    for how in outputs:
        if how is None or how[0] == "input":
            made.append(None if how is None else inputs[how[1]])
            continue
        shape, stride, offset, dtype, device, requires_grad = how[1]
        with torch._C._DisableTorchDispatch():
            meta = torch.empty_strided(
                shape, stride, dtype=dtype, device="meta", requires_grad=requires_grad
            )
            if how[0] == "view":
                meta.set_(inputs[0].untyped_storage(), offset, shape, stride)
        made.append(FakeTensor(mode, meta, device))
    return made[0] if kind == "tensor" else kind(made)


def _layouts(out) -> tuple:
    """`_layout`, with whether each output requires grad and its dispatch keys."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    extra = tuple(
        None if t is None else (t.requires_grad, torch._C._dispatch_key_set(t)) for t in outs
    )
    return _layout(out), extra


class FastOutputs:
    """The verified fast paths and the remembered outputs of one process (kept across
    estimators: a worker verifies each signature once)."""

    def __init__(self) -> None:
        self.verified: set[tuple] = set()
        self.refused: set[tuple] = set()
        self.remembered: dict[tuple, tuple] = {}  # remembered outputs: key -> recipe
        self.forgotten: set[tuple] = set()  # keys whose outputs are not remembered
        self.recalled = 0  # calls answered from `remembered`, for tests and benchmarks

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
            same = not aliased and _layouts(fast(*args)) == _layouts(out)
            (self.verified if same else self.refused).add(key)
        return out

    def call_fake(self, func, args, kwargs) -> object:
        """`call` on fake tensors, with FakeTensor's cache answered here: an operator whose
        inputs' layouts were seen before gets the outputs it got then (see the module's note)."""
        if func in FAST:
            return self.call(func, args, kwargs)
        if not _rememberable(func):
            return func(*args, **(kwargs or {}))
        inputs: list[FakeTensor] = []
        parts: list = [func, torch.get_default_dtype(), torch.is_inference_mode_enabled()]
        if not (_describe(args, parts, inputs) and _describe(kwargs, parts, inputs)):
            return func(*args, **(kwargs or {}))
        if inputs:
            mode = inputs[0].fake_mode
        else:  # a factory: the fake mode running, and where tensors go by default
            mode = torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE)
            if mode is None:
                return func(*args, **(kwargs or {}))
            parts.append(torch._C._get_default_device())
        key = tuple(parts)
        recipe = self.remembered.get(key)
        if recipe is not None:
            self.recalled += 1
            return _made(recipe, inputs, mode)
        out = func(*args, **(kwargs or {}))
        if key not in self.forgotten:
            recipe = _recipe(func, inputs, out, mode)
            if recipe is not None and _layouts(_made(recipe, inputs, mode)) == _layouts(out):
                self.remembered[key] = recipe
            else:
                self.forgotten.add(key)
        return out


FAST_OUTPUTS = FastOutputs()


class MetaFastOutputs(TorchDispatchMode):
    """The fast outputs on the meta device, whose kernels for these operators are the same
    Python decompositions (a RevBiFPN-S0 forward's hardswish alone: 0.9 s). Entered outside
    a flop counter, so that the counter still sees every operator first."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return FAST_OUTPUTS.call(func, args, kwargs)  # the others run as they are
