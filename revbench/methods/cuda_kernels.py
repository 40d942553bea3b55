"""The kernels a CUDA card runs where the CPU runs others, and what they save for backward.

An estimate for a card (`--card`, not `cpu`) runs its step on fake CPU tensors; where
PyTorch picks a kernel by device, `CardKernels` makes the card's choice instead, so that the
tensors the step allocates and saves are the card's (in the categories any tensor has:
activations, temporaries). Rules read in PyTorch's source, releases 2.4 to 2.11 and main
(taken for the later releases):

- `scaled_dot_product_attention` (ATen/native/transformers/cuda/sdp_utils.cpp,
  `select_sdp_backend`): the first of the backends in priority order whose checks pass,
  `attention_kernel`. The chosen ATen operator is then called directly, so that its meta
  kernel gives the card's outputs: the output in the kernel's layout ((B, L, H, D) memory
  for the memory-efficient kernel, the query's for flash), the log-sum-exp rows
  the backward reads (the memory-efficient kernel pads them to a multiple of 32), the
  random-number state (on the host for the memory-efficient kernel, and for flash up to
  2.6: `host_outputs`), and flash's head dimension padded to a multiple of 8 (attention.cpp,
  `pad_last_dim`). The CPU runs its own flash kernel, or the math path, which saves the
  (L, S) attention weights, whenever attention dropout is on.
- `dropout` (ATen/native/Dropout.cpp): on a card the fused `native_dropout`, which saves a
  one-byte mask (`is_fused_kernel_acceptable`); the CPU multiplies by a noise tensor of
  the input's dtype.

Attention with a mask, grouped heads (`enable_gqa`) or nested tensors is left as the CPU
runs it (counted in `CardKernels.chosen` as "unmodelled"), and the kernels' own scratch
buffers (the backward's delta rows and accumulators) are left out, as
`revbench.cards.LEFT_OUT` says.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..autocast_policy import lower_precision

_SDPA = F.scaled_dot_product_attention
_DROPOUT = F.dropout
_HALF = (torch.float16, torch.bfloat16)
_aten = torch.ops.aten
_EFFICIENT = _aten._scaled_dot_product_efficient_attention.default
_FLASH = _aten._scaled_dot_product_flash_attention.default


def attention_kernel(
    capability: tuple[int, int],
    release: tuple[int, int],
    *,
    dtype: torch.dtype,
    head_dim: int,
    head_dim_v: int,
    dropout_p: float = 0.0,
    needs_grad: bool = True,
    is_causal: bool = False,
    seq_q: int = 2,
    seq_k: int = 2,
) -> str:
    """The kernel CUDA runs `scaled_dot_product_attention` with on a card of compute
    `capability` under torch `release`, for dense 4-D inputs without a mask: 'cudnn',
    'flash', 'efficient' or 'math'."""
    checks = {
        "cudnn": lambda: _cudnn_ok(capability, release, dtype, head_dim, head_dim_v, seq_q, seq_k),
        # Flash's causal mask is for square attention only.
        "flash": lambda: (
            _flash_ok(capability, release, dtype, head_dim, head_dim_v, dropout_p, needs_grad)
            and not (is_causal and seq_q != seq_k)
        ),
        "efficient": lambda: _efficient_ok(capability, release, dtype, head_dim, head_dim_v),
    }
    for backend in _priority(capability, release):
        if backend == "math" or checks[backend]():
            return backend
    return "math"


def _priority(capability: tuple[int, int], release: tuple[int, int]) -> tuple[str, ...]:
    # Context.h's order is flash, efficient, math, cudnn: cuDNN runs only where it is
    # moved to the front. 2.5.0 did so on sm90 (2.5.1 made it opt-in again, pytorch#138522);
    # 2.9's rule needed a newer cuDNN than its wheels shipped; from 2.11 (cuDNN 9.19 in the
    # wheel) it is first on compute capability 9.0 and 10.0/10.3 (#170800, #171627).
    major, minor = capability
    if release >= (2, 11) and major in (9, 10) and minor in (0, 3):
        return ("cudnn", "flash", "efficient", "math")
    return ("flash", "efficient", "math")


def _fused_top(release: tuple[int, int]) -> tuple[int, int]:
    # The newest card flash and the memory-efficient kernel are built for.
    return (9, 0) if release <= (2, 6) else (12, 0) if release == (2, 7) else (12, 1)


def _cudnn_ok(capability, release, dtype, head_dim, head_dim_v, seq_q, seq_k) -> bool:
    top = (9, 0) if release <= (2, 6) else (12, 1)
    limit = 256 if release >= (2, 9) and capability == (9, 0) else 128
    return (
        (8, 0) <= capability <= top
        and dtype in _HALF
        and head_dim == head_dim_v
        and head_dim % 8 == 0
        and head_dim <= limit
        and seq_q > 1
        and seq_k > 1
    )


def _flash_ok(capability, release, dtype, head_dim, head_dim_v, dropout_p, needs_grad) -> bool:
    if not (8, 0) <= capability <= _fused_top(release) or dtype not in _HALF:
        return False
    if head_dim != head_dim_v or head_dim > 256:
        return False
    # Cards with less shared memory (sm86/89, and sm120/121 from 2.7) lack the backward
    # for the largest head dimensions.
    small = capability in ((8, 6), (8, 9)) or (release >= (2, 7) and capability[0] == 12)
    if needs_grad and small:
        return not (192 < head_dim <= 224 or (head_dim > 224 and dropout_p > 0))
    return True


def _efficient_ok(capability, release, dtype, head_dim, head_dim_v) -> bool:
    if not (5, 0) <= capability <= _fused_top(release):
        return False
    if dtype not in (torch.float32, *_HALF) or (dtype == torch.bfloat16 and capability < (8, 0)):
        return False
    # minimum_gemm_alignment: the kernel rejects head sizes it cannot load aligned.
    if capability >= (8, 0):
        alignment = 4 if dtype == torch.float32 else 8
    elif capability >= (7, 0):
        alignment = 1 if dtype == torch.float32 else 8
    else:
        alignment = 1
    return head_dim % alignment == 0 and head_dim_v % alignment == 0


def host_outputs(func, release: tuple[int, int]) -> tuple[int, ...]:
    """Which outputs of attention operator `func` live on the host in a run on a card: the
    random-number seed and offset of the memory-efficient kernel, and of flash up to 2.6
    (from 2.7 flash keeps them on the card, as cuDNN does)."""
    if func is _EFFICIENT:
        return (2, 3)
    if func is _FLASH and release <= (2, 6):
        return (6, 7)
    return ()


class CardKernels:
    """Runs `scaled_dot_product_attention` and `dropout` as CUDA would on a card of
    compute `capability` under torch `release`, while entered; `chosen` counts the
    attention kernels picked.

    The two functions are replaced in `torch.nn.functional` for the block, not caught by a
    torch function mode: autograd runs a backward without the caller's modes, and the
    reversible and checkpointed models recompute their forward there (a mode would give the
    recomputation the CPU's kernel and the forward the card's). Models call them through
    the module (`F.scaled_dot_product_attention`, `nn.Dropout`), as timm's and revbench's do.
    """

    def __init__(self, capability: tuple[int, int], release: tuple[int, int]):
        self.capability, self.release = capability, release
        self.chosen: dict[str, int] = {}
        self._saved: tuple | None = None

    def __enter__(self) -> CardKernels:
        if self._saved is not None:
            raise RuntimeError("CardKernels is already entered")
        self._saved = (F.scaled_dot_product_attention, F.dropout)
        F.scaled_dot_product_attention, F.dropout = self._attention, _dropout
        return self

    def __exit__(self, *exc) -> None:
        F.scaled_dot_product_attention, F.dropout = self._saved
        self._saved = None

    def _attention(
        self,
        query,
        key,
        value,
        attn_mask=None,
        dropout_p=0.0,
        is_causal=False,
        scale=None,
        enable_gqa=False,
    ):
        dense = query.dim() == key.dim() == value.dim() == 4 and not query.is_nested
        if not dense or enable_gqa or attn_mask is not None:
            self._count("unmodelled")
            return _SDPA(
                query,
                key,
                value,
                attn_mask,
                dropout_p,
                is_causal,
                scale=scale,
                enable_gqa=enable_gqa,
            )
        # sdpa is a lower-precision op under CUDA's autocast; the private kernels called
        # instead have no autocast entry of their own.
        query, key, value = lower_precision(query, key, value)
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
        kernel = attention_kernel(
            self.capability,
            self.release,
            dtype=query.dtype,
            head_dim=query.shape[-1],
            head_dim_v=value.shape[-1],
            dropout_p=dropout_p,
            needs_grad=needs_grad,
            is_causal=is_causal,
            seq_q=query.shape[-2],
            seq_k=key.shape[-2],
        )
        self._count(kernel)
        if kernel == "efficient":
            return _EFFICIENT(
                query, key, value, None, needs_grad, dropout_p, is_causal, scale=scale
            )[0]
        if kernel == "cudnn":
            return _aten._scaled_dot_product_cudnn_attention(
                query, key, value, None, needs_grad, dropout_p, is_causal, False, scale=scale
            )[0]
        if kernel == "math":
            return _aten._scaled_dot_product_attention_math(
                query, key, value, None, dropout_p, is_causal, scale=scale
            )[0]
        head_dim = query.shape[-1]
        if head_dim % 8 == 0:
            return _FLASH(query, key, value, dropout_p, is_causal, False, scale=scale)[0]
        # Flash runs on head dimensions padded to a multiple of 8 (copies of q, k and v),
        # scaled by the true one, and the output is sliced back.
        pad = 8 - head_dim % 8
        query, key, value = (F.pad(t, (0, pad)) for t in (query, key, value))
        scale = scale if scale is not None else 1 / math.sqrt(head_dim)
        return _FLASH(query, key, value, dropout_p, is_causal, False, scale=scale)[0][
            ..., :head_dim
        ]

    def _count(self, kernel: str) -> None:
        self.chosen[kernel] = self.chosen.get(kernel, 0) + 1


def _dropout(input, p=0.5, training=True, inplace=False):
    # Dropout.cpp: the fused kernel for 0 < p < 1 on a non-empty input in training; the
    # in-place form always multiplies by noise, on a card too.
    if not training or not 0 < p < 1 or input.numel() == 0 or inplace:
        return _DROPOUT(input, p, training, inplace)
    return _aten.native_dropout(input, p, True)[0]
