"""CUDA's autocast cast policy, applied to CPU tensors: amp estimates without a GPU.

The estimator runs its step on fake CPU tensors, so `torch.autocast` takes the CPU's op
lists, which differ from CUDA's where memory is concerned: on CUDA, layer_norm, group_norm,
softmax, log_softmax, sum, exp, pow, the losses and upsampling run in float32 (a float32
output, twice the bytes of a half one), and convolution, addmv, einsum and the RNN cells
run in the lower precision; on the CPU the norms and softmax keep their input's dtype, and
cat, stack and the 3-d pools have casts CUDA does not make. Fake CUDA tensors would take
CUDA's lists directly, but this torch build refuses both autocast("cuda") and a backward
on them without a driver, so the policy is applied explicitly instead.

`cuda_cast_policy()` registers, for the duration of the block, Python kernels under the
AutocastCPU dispatch key that implement CUDA's policy (c10's autocast_mode.cpp: an op is
cast to the autocast dtype, to float32, to the widest input type, or refused), and
fallthroughs for the ops only the CPU list has. Ops on both lists with the same lower-
precision policy (linear, conv1d-3d, matmul, mm, bmm, addmm, baddbmm, sdpa, ...) keep the
CPU's C++ kernel, which uses autocast's cast cache exactly as the CUDA one does (a
weight's half copy made once per autocast region). The Python kernels cast without that
cache; they cover ops that rarely take weights (addmv, einsum, RNN cells, the norms' fp32
casts, where the cache never applies).

CUDA_POLICY is the table of torch 2.14's AutocastCUDA registrations
(`torch._C._dispatch_get_registrations_for_dispatch_key("AutocastCUDA")`), each with the
policy autocast_mode.cpp gives it; tests check it against the dispatcher.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch.utils._pytree import tree_map

LOWER = "lower_precision_fp"  # cast floating inputs to the autocast dtype
FP32 = "fp32"  # cast floating inputs to float32
FP32_SET_OPT_DTYPE = "fp32_set_opt_dtype"  # run with dtype=float32 unless one is given
FP32_APPEND_DTYPE = "fp32_append_dtype"  # call the overload with a dtype, float32
PROMOTE = "promote"  # cast floating inputs to the widest among them
BANNED = "banned"  # refuse: unsafe under autocast

_LOWER_OPS = """
_convolution _convolution.deprecated conv1d conv2d conv3d conv_tbc conv_transpose1d
conv_transpose2d.input conv_transpose3d.input convolution cudnn_convolution
cudnn_convolution_transpose prelu addmm addmv addr matmul einsum mm mv linalg_vecdot linear
addbmm baddbmm bmm chain_matmul linalg_multi_dot _thnn_fused_lstm_cell _thnn_fused_gru_cell
lstm_cell gru_cell rnn_tanh_cell rnn_relu_cell _scaled_dot_product_flash_attention
scaled_dot_product_attention _cudnn_rnn
"""
_FP32_OPS = """
acos asin cosh erfinv exp expm1 log log10 log2 log1p reciprocal rsqrt sinh tan
pow.Tensor_Scalar pow.Tensor_Tensor pow.Scalar softplus layer_norm native_layer_norm
group_norm rms_norm frobenius_norm.dim nuclear_norm nuclear_norm.dim cosine_similarity
poisson_nll_loss cosine_embedding_loss nll_loss nll_loss2d hinge_embedding_loss kl_div
l1_loss smooth_l1_loss huber_loss mse_loss margin_ranking_loss multilabel_margin_loss
soft_margin_loss triplet_margin_loss multi_margin_loss binary_cross_entropy_with_logits
dist pdist cdist renorm logsumexp linalg_matrix_sqrth
upsample_nearest1d _upsample_nearest_exact1d upsample_nearest2d _upsample_nearest_exact2d
upsample_nearest3d _upsample_nearest_exact3d upsample_linear1d upsample_bilinear2d
_upsample_bilinear2d_aa upsample_trilinear3d upsample_bicubic2d _upsample_bicubic2d_aa
"""
_FP32_SET_OPT_DTYPE_OPS = """
prod prod.dim_int softmax.int log_softmax.int cumprod cumsum linalg_vector_norm
linalg_matrix_norm linalg_matrix_norm.str_ord sum sum.dim_IntList
"""
_FP32_APPEND_DTYPE_OPS = "norm.Scalar norm.ScalarOpt_dim"
_PROMOTE_OPS = """
addcdiv addcmul atan2 bilinear cross dot vdot grid_sampler index_put tensordot scatter_add
"""
_BANNED_OPS = "binary_cross_entropy"

CUDA_POLICY: dict[str, str] = {
    op: policy
    for ops, policy in (
        (_LOWER_OPS, LOWER),
        (_FP32_OPS, FP32),
        (_FP32_SET_OPT_DTYPE_OPS, FP32_SET_OPT_DTYPE),
        (_FP32_APPEND_DTYPE_OPS, FP32_APPEND_DTYPE),
        (_PROMOTE_OPS, PROMOTE),
        (_BANNED_OPS, BANNED),
    )
    for op in ops.split()
}
# norm's overloads without a dtype, and the ones CUDA redispatches them to
_APPEND_DTYPE_TARGET = {"norm.Scalar": "norm.ScalarOpt_dtype", "norm.ScalarOpt_dim": "norm.dtype"}

_AUTOCAST_CPU = torch._C.DispatchKey.AutocastCPU


def _registered(key: str) -> set[str]:
    return {
        name.removeprefix("aten::")
        for name in torch._C._dispatch_get_registrations_for_dispatch_key(key)
        if name.startswith("aten::")
    }


def _overload(name: str):
    packet, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.aten, packet), overload or "default")


def _eligible(x) -> bool:
    # c10's is_eligible: a defined floating tensor, float64 excepted
    return isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != torch.float64


def _cast(dtype: torch.dtype, tree):
    return tree_map(lambda x: x.to(dtype) if _eligible(x) and x.dtype != dtype else x, tree)


def lower_precision(*tensors):
    """`tensors` as autocast's lower-precision policy passes them to an op: cast to the
    autocast dtype where autocast is on (for callers that run such an op themselves)."""
    if not torch.is_autocast_enabled("cpu"):
        return tensors
    return _cast(torch.get_autocast_dtype("cpu"), tensors)


def _kernel(name: str, policy: str):
    op = _overload(name)
    arguments = op._schema.arguments

    def run(*args, **kwargs):
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(_AUTOCAST_CPU)):
            if policy == LOWER:
                dtype = torch.get_autocast_dtype("cpu")
                return op(*_cast(dtype, args), **_cast(dtype, kwargs))
            if policy == FP32:
                return op(*_cast(torch.float32, args), **_cast(torch.float32, kwargs))
            if policy == PROMOTE:
                tensors = [x for x in torch.utils._pytree.tree_leaves((args, kwargs))]
                dtypes = [x.dtype for x in tensors if _eligible(x)]
                widest = dtypes[0] if dtypes else None
                for d in dtypes[1:]:
                    widest = torch.promote_types(widest, d)
                return (
                    op(*_cast(widest, args), **_cast(widest, kwargs))
                    if widest
                    else op(*args, **kwargs)
                )
            if policy == BANNED:
                raise RuntimeError(
                    f"torch.nn.functional.{name} is unsafe to autocast (CUDA refuses it); "
                    "use binary_cross_entropy_with_logits"
                )
            first = args[0] if args else None
            if not _eligible(first):
                return op(*args, **kwargs)
            if policy == FP32_APPEND_DTYPE:
                return _overload(_APPEND_DTYPE_TARGET[name])(*args, **kwargs, dtype=torch.float32)
            # FP32_SET_OPT_DTYPE: the optional dtype argument, float32 when not given
            index = next(i for i, a in enumerate(arguments) if a.name == "dtype")
            if index < len(args):
                if args[index] is None:
                    args = (*args[:index], torch.float32, *args[index + 1 :])
            elif kwargs.get("dtype") is None:
                kwargs = {**kwargs, "dtype": torch.float32}
            return op(*args, **kwargs)

    return run


def cpu_overrides() -> tuple[dict[str, str], set[str]]:
    """What `cuda_cast_policy` registers: {op: CUDA policy} for Python kernels, and the ops
    that fall through (the CPU casts them, CUDA does not)."""
    cpu = _registered("AutocastCPU")
    cuda = {name: policy for name, policy in CUDA_POLICY.items() if _exists(name)}
    # The CPU's C++ kernel where it applies CUDA's policy already: keeps the cast cache.
    kernels = {n: p for n, p in cuda.items() if not (p == LOWER and n in cpu)}
    fallthrough = cpu - set(cuda)
    return kernels, fallthrough


def _exists(name: str) -> bool:
    try:
        _overload(name)
    except AttributeError:
        return False
    return True


@contextlib.contextmanager
def cuda_cast_policy() -> Iterator[None]:
    """Within the block, autocast on CPU tensors makes CUDA's casts (see the module)."""
    kernels, fallthrough = cpu_overrides()
    lib = torch.library.Library("aten", "IMPL")  # noqa: TOR901 (scoped: destroyed below)
    try:
        with warnings.catch_warnings():
            # "Overriding a previously registered kernel": the point of the block
            warnings.simplefilter("ignore")
            for name, policy in sorted(kernels.items()):
                lib.impl(name, _kernel(name, policy), "AutocastCPU")
            for name in sorted(fallthrough):
                lib.impl(name, torch.library.fallthrough_kernel, "AutocastCPU")
        yield
    finally:
        lib._destroy()  # the CPU's own kernels apply again
