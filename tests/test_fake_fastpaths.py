"""The estimator's fast fake outputs (revbench/methods/fake_fastpaths.py) are FakeTensor's
own: layout for layout on the operators they cover, refused where they would differ.
Remembered outputs are made as FakeTensor's cache makes them (new, view, in place), only
for inputs laid out alike, never for constants, real tensors or value-sized outputs, and
forgotten where they would differ. The same estimate, event for event, with them or
without, for every traced family: tests/test_estimate_extrapolation.py."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from revbench.methods import fake_fastpaths
from revbench.methods.fake_fastpaths import FAST, FastOutputs, _layout, _layouts, _signature

pytestmark = pytest.mark.usefixtures("one_thread")
aten = torch.ops.aten

LAYOUTS = {
    "contiguous": lambda shape, dtype: torch.empty(shape, dtype=dtype),
    "channels_last": lambda shape, dtype: torch.empty(shape, dtype=dtype).to(
        memory_format=torch.channels_last
    ),
}


# A feature map, a squeeze-excite gate, and a batch of one (as counting runs).
SHAPES = [(3, 4, 5, 6), (3, 4, 1, 1), (1, 4, 5, 6)]


def _cases():
    """(operator, arguments) for every covered operator, dtype, layout, shape and flag."""
    kinds = itertools.product(
        (torch.float32, torch.bfloat16, torch.float16), LAYOUTS.items(), SHAPES
    )
    for dtype, (layout, make), shape in kinds:
        x, g = make(shape, dtype), make(shape, dtype)
        layout = f"{layout}-{'x'.join(map(str, shape))}"
        vec = [torch.empty(4) for _ in range(4)]
        for op in (aten.hardswish.default, aten.hardsigmoid.default):
            yield f"{op}-{dtype}-{layout}", op, (x,)
        for op in (aten.hardswish_backward.default, aten.hardsigmoid_backward.default):
            yield f"{op}-{dtype}-{layout}", op, (g, x)
        for training in (True, False):
            args = (x, *vec, training, 0.1, 1e-5)
            yield f"bn-{dtype}-{layout}-{training}", aten.native_batch_norm.default, args
        args = (x, *vec, 0.1, 1e-5)
        yield f"bn_eval-{dtype}-{layout}", aten._native_batch_norm_legit_no_training.default, args
        saved = torch.empty(4, dtype=dtype)  # a training step's (eval saves none)
        for training in (True, False):
            for mask in ([True, True, True], [True, False, False], [False, True, True]):
                args = (g, x, *vec[:3], saved, saved, training, 1e-5, mask)
                name = f"bn_backward-{dtype}-{layout}-{training}-{mask}"
                yield name, aten.native_batch_norm_backward.default, args
        yield f"gelu_backward-{dtype}-{layout}", aten.gelu_backward.default, (g, x)
        for scales in ((None, None), (2.0, 2.0)):
            args = (x, [10, 12], False, *scales)
            yield f"upsample-{dtype}-{layout}-{scales}", aten.upsample_bilinear2d.default, args


def _layer_norm_cases():
    """Layer norm over the last dimension: tokens, a channels-last view of a feature map
    (ConvNeXt blocks), a contiguous map; each backward mask."""
    inputs = {
        "tokens": lambda dtype: torch.empty(2, 5, 8, dtype=dtype),
        "permuted": lambda dtype: torch.empty(2, 8, 3, 4, dtype=dtype).permute(0, 2, 3, 1),
        "map": lambda dtype: torch.empty(2, 3, 4, 8, dtype=dtype),
    }
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for name, make in inputs.items():
            x, w, b = make(dtype), torch.empty(8, dtype=dtype), torch.empty(8, dtype=dtype)
            yield f"ln-{dtype}-{name}", aten.native_layer_norm.default, (x, [8], w, b, 1e-6)
            stats = torch.empty(*x.shape[:-1], 1, dtype=dtype)
            for grad in ("contiguous", "strided_as_input"):
                g = torch.empty(x.shape, dtype=dtype)
                if grad != "contiguous":
                    g = torch.empty_like(x)
                for mask in ([True, True, True], [True, False, False]):
                    args = (g, x, [8], stats, stats, w, b, mask)
                    op = aten.native_layer_norm_backward.default
                    yield f"ln_backward-{dtype}-{name}-{grad}-{mask}", op, args


ALL_CASES = [*_cases(), *_layer_norm_cases()]


def _fake(args, mode):
    return tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize("op, args", [c[1:] for c in ALL_CASES], ids=[c[0] for c in ALL_CASES])
def test_fast_outputs_are_fakemodes_own(op, args):
    mode = FakeTensorMode()
    args = _fake(args, mode)
    with mode:
        assert _signature(op, args, {}) is not None
        assert _layout(FAST[op](*args)) == _layout(op(*args))


# Counting runs in float32 on the meta device, whose kernels for these are the same
# decompositions; other dtypes there would be verified at run time like any signature.
META_CASES = [c for c in ALL_CASES if "float32" in c[0]]


@pytest.mark.parametrize("op, args", [c[1:] for c in META_CASES], ids=[c[0] for c in META_CASES])
def test_fast_outputs_are_the_meta_devices_own(op, args):
    args = tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args)
    assert _signature(op, args, {}) is not None
    assert _layout(FAST[op](*args)) == _layout(op(*args))


def test_odd_strides_or_non_dense_inputs_take_fakemodes_path():
    mode = FakeTensorMode()
    with mode:
        pooled = torch.empty(3, 4, 1, 1)  # a squeeze-excite gate, strided as it is made
        corner = torch.empty(3, 4, 5, 6)[:, :, :1, :1]  # size 1, but strided as its base
        strided = torch.empty(3, 4, 10, 6)[:, :, ::2]
        unsaved = torch.empty(0)  # batch norm in eval mode saves no statistics
    real = torch.empty(3, 4, 5, 6)
    op = aten.hardsigmoid.default
    assert _signature(op, (pooled,), {}) is not None
    assert _signature(op, (corner.contiguous(),), {}) == _signature(op, (pooled,), {})
    assert _signature(op, (corner,), {}) is None
    assert _signature(op, (strided,), {}) is None
    assert _signature(op, (real,), {}) is None  # neither fake nor on the meta device
    with mode:
        different = (torch.empty(3, 4, 5, 6), torch.empty(3, 4, 5, 6).contiguous(
            memory_format=torch.channels_last))  # fmt: skip
    assert _signature(aten.hardswish_backward.default, different, {}) is None
    with mode:
        x, g, vec = torch.empty(3, 4, 5, 6), torch.empty(3, 4, 5, 6), torch.empty(4)
    args = (g, x, vec, vec, vec, unsaved, unsaved, False, 1e-5, [True, True, True])
    assert _signature(aten.native_batch_norm_backward.default, args, {}) is None


def test_a_signature_whose_fast_output_differs_is_refused(monkeypatch):
    wrong = dict(FAST)
    wrong[aten.hardswish.default] = lambda x: torch.empty(x.shape, dtype=torch.float64)
    monkeypatch.setattr(fake_fastpaths, "FAST", wrong)
    outputs = FastOutputs()
    mode = FakeTensorMode()
    with mode:
        x = torch.empty(3, 4, 5, 6)
        first, second = (outputs.call(aten.hardswish.default, (x,), {}) for _ in range(2))
    assert first.dtype == second.dtype == torch.float32  # FakeTensor's, both times
    assert len(outputs.refused) == 1 and not outputs.verified


class _CountingHardswish:
    """aten.hardswish, counting its calls."""

    calls = 0

    def __call__(self, *args):
        self.calls += 1
        return aten.hardswish.default(*args)


def test_a_verified_signature_answers_without_fakemodes_path(monkeypatch):
    op = _CountingHardswish()
    monkeypatch.setattr(fake_fastpaths, "FAST", {op: fake_fastpaths._unary})
    outputs = FastOutputs()
    with FakeTensorMode():
        first = outputs.call(op, (torch.empty(3, 4, 5, 6),), {})  # verifies the layout
        other = outputs.call(op, (torch.empty(5, 4, 7, 6),), {})  # then answers itself
    assert op.calls == 1 and len(outputs.verified) == 1
    assert tuple(first.shape) == (3, 4, 5, 6) and tuple(other.shape) == (5, 4, 7, 6)


def _empty_fake(*shape, mode):
    with mode:
        return torch.empty(shape)


def test_remembered_outputs_are_fakemodes_for_new_views_and_in_place():
    mode, outputs = FakeTensorMode(), FastOutputs()
    x, y = _empty_fake(4, 6, mode=mode), _empty_fake(4, 6, mode=mode)
    calls = [
        (aten.mul.Tensor, (x, y), {}),  # a new tensor
        (aten.t.default, (x,), {}),  # a view: the input's storage
        (aten.add_.Tensor, (x, y), {}),  # in place: the input itself
        (aten.sum.dim_IntList, (x, [1]), {"keepdim": True}),
    ]
    with mode:
        firsts = [outputs.call_fake(*call) for call in calls]
        again = [outputs.call_fake(*call) for call in calls]
    assert outputs.recalled == len(calls) and len(outputs.remembered) == len(calls)
    for first, second in zip(firsts, again):
        assert _layouts(first) == _layouts(second)
    assert again[1].untyped_storage()._cdata == x.untyped_storage()._cdata
    assert again[2] is x
    assert again[0].untyped_storage()._cdata != firsts[0].untyped_storage()._cdata


def test_inputs_laid_out_otherwise_are_not_answered_from_memory():
    mode, outputs = FakeTensorMode(), FastOutputs()
    x = _empty_fake(4, 6, mode=mode)
    with mode:
        outputs.call_fake(aten.relu.default, (x,), {})
        others = [
            _empty_fake(4, 7, mode=mode),  # sizes
            x.t().contiguous().t(),  # strides
            _empty_fake(5, 6, mode=mode)[1:],  # offset
            x.to(torch.float64),  # dtype
            x.detach().requires_grad_(),  # requires grad
        ]
        for other in others:
            out = outputs.call_fake(aten.relu.default, (other,), {})
            assert _layouts(out) == _layouts(aten.relu.default(other))
    assert outputs.recalled == 0 and len(outputs.remembered) == 1 + len(others)
    with mode:
        outputs.call_fake(aten.relu.default, (x,), {})
        outputs.call_fake(aten.leaky_relu.default, (x, 0.5), {})  # 0.5 and 1 differ
        outputs.call_fake(aten.leaky_relu.default, (x, 1), {})
    assert outputs.recalled == 1


def test_constants_real_tensors_and_value_dependent_outputs_take_fakemodes_path():
    mode, outputs = FakeTensorMode(allow_non_fake_inputs=True), FastOutputs()
    real = torch.ones(8)
    with mode:
        constant = torch.tensor(2.0)  # a fake tensor that keeps its value
        x = torch.empty(8)
        for _ in range(2):
            outputs.call_fake(aten.mul.Tensor, (constant, constant), {})
            outputs.call_fake(aten.mul.Tensor, (x, real), {})
    assert constant.constant is not None
    assert not outputs.remembered and not outputs.forgotten
    assert not fake_fastpaths._rememberable(aten.nonzero.default)  # sized by values
    assert not fake_fastpaths._rememberable(aten.resize_.default)  # resizes in place


def test_outputs_made_otherwise_than_fakemodes_are_forgotten(monkeypatch):
    # A recipe that would make a different layout is checked against FakeTensor's answer
    # on first sight, and never used.
    mode, outputs = FakeTensorMode(), FastOutputs()
    x = _empty_fake(4, 6, mode=mode)

    def wrong(recipe, inputs, mode):
        return aten.mul.Tensor(*inputs).to(torch.float64)

    with mode:
        monkeypatch.setattr(fake_fastpaths, "_made", wrong)
        outputs.call_fake(aten.mul.Tensor, (x, x), {})
        second = outputs.call_fake(aten.mul.Tensor, (x, x), {})
    assert len(outputs.forgotten) == 1 and not outputs.remembered and outputs.recalled == 0
    assert second.dtype == torch.float32
