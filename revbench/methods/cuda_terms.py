"""What a CUDA card adds to a step's allocated memory that the CPU kernels do not.

Each term below is allocated through CUDA's caching allocator, so it counts in
`torch.cuda.max_memory_allocated()`, and each follows a rule read in PyTorch's source
(aten/src/ATen/cuda/CublasHandlePool.cpp, CUDABlas.cpp, native/cuda/Blas.cpp and
torch/optim), which changed between releases; the rules are kept by release here.

cuBLAS workspace (category `library_workspace`). The first cuBLAS call on a handle and
stream allocates a workspace and keeps it for the process (`getCurrentCUDABlasHandle`;
`torch.cuda.empty_cache()` does not free it). Handles are per thread, and a training step's
backward runs on the autograd engine's device thread, so a step whose forward and backward
both multiply matrices holds two. Size: `CUBLAS_WORKSPACE_CONFIG` (":SIZE_KIB:COUNT" pairs,
summed), by default ":4096:2:16:8" = 8,519,680 bytes, or ":4096:8" = 32 MiB on the newest
cards (compute capability 9.0 in torch 2.4-2.11; major 9, 10 and 12 from 2.12, and 11 from
2.14: pytorch#175344, #189312).

cuBLASLt workspace. `addmm` with a bias vector (nn.Linear with bias) goes through cuBLASLt
(`gemm_and_bias`, Blas.cpp's `isInputCompliesAddmmCudaLt`), whose workspace is
`CUBLASLT_WORKSPACE_SIZE` KiB, 1 MiB by default: up to torch 2.8 allocated for each call and
freed after it; in 2.9-2.11 kept per handle and stream (pytorch#156495), and the call also
sets up the cuBLAS workspace of its handle; from 2.12 cuBLASLt uses the cuBLAS workspace
itself (pytorch#175879) and adds nothing.

The optimizer (`foreach=True`, `is_host_state`). On CUDA parameters PyTorch's
optimizers default to their multi-tensor (foreach) implementation
(`torch.optim.optimizer._default_to_fused_or_foreach`): AdamW's `_foreach_sqrt` makes a
temporary of every second moment at once, where the per-parameter loop the CPU runs makes
two of one parameter's at a time. AdamW's step counts are CPU tensors unless the
optimizer is capturable or fused (`_init_group`), so they and the increment made for them
are not on the card.

The kernels a card runs in place of the CPU's (attention, dropout) are
`revbench.methods.cuda_kernels`.

What is left out (`revbench.cards.LEFT_OUT`), each for a reason docs/measuring.md gives:
cuDNN's convolution workspaces (cuDNN's heuristics pick the algorithm, and its workspace,
on the card; PyTorch allocates it for the call through the caching allocator and frees it
after, and when it does not fit tries the next configuration instead of failing,
Conv_v8.cpp's `try_configs`), cuDNN batch norm's reserve space (sized by cuDNN on the card;
its saved statistics are the CPU kernel's), CUDA kernels' internal temporaries, and the
attention kernel for masked or grouped-head attention (the CPU's is counted).

Releases before 2.4 and after 2.14 are not covered: their rules are taken to be those of
the nearest covered release, and the estimate says so (`LibraryRules.verified`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..cards import LEFT_OUT, card_capability
from ..environment import torch_build

if TYPE_CHECKING:
    import torch

FIRST_RELEASE, LAST_RELEASE = (2, 4), (2, 14)  # the releases these rules were read for

CUBLAS_DEFAULT_CONFIG = ":4096:2:16:8"  # 2 x 4 MiB + 8 x 16 KiB = 8,519,680 bytes
CUBLAS_LARGE_CONFIG = ":4096:8"  # 32 MiB
CUBLASLT_DEFAULT_KIB = 1024

# The operators that run on cuBLAS (their CUDA kernels call cublas<t>gemm / gemv / dot).
BLAS_OPERATORS = frozenset(
    {"mm", "addmm", "bmm", "baddbmm", "addbmm", "mv", "addmv", "dot", "vdot", "_addmm_activation"}
)
# Composite operators that reach a dispatch mode whole under inference_mode (autograd's
# key, where they would be decomposed, is skipped) and call the ones above.
_COMPOSITE_BLAS = frozenset({"linear", "matmul", "einsum", "tensordot", "bilinear"})
# by name: the run's manifest reads this module's rules without loading torch
_LT_DTYPES = frozenset({"torch.float32", "torch.float16", "torch.bfloat16", "torch.float64"})


def release(version: str | None = None) -> tuple[int, int]:
    """(major, minor) of a torch version string ('2.11.0+cu128' -> (2, 11))."""
    major, minor = re.match(r"(\d+)\.(\d+)", version or torch_build()["torch"]).groups()
    return int(major), int(minor)


def workspace_config_bytes(config: str) -> int | None:
    """Bytes of a CUBLAS_WORKSPACE_CONFIG value (sum of SIZE KiB x COUNT over its pairs);
    None where no pair parses (torch then warns and uses its default)."""
    pairs = re.findall(r":([0-9]+):([0-9]+)", config)
    return sum(int(size) * 1024 * int(count) for size, count in pairs) if pairs else None


@dataclass(frozen=True)
class LibraryRules:
    """The cuBLAS and cuBLASLt workspace rules of one torch release on one card class."""

    release: tuple[int, int]  # the release whose rules these are
    verified: bool  # False: the installed torch is outside FIRST_RELEASE..LAST_RELEASE
    cublas_bytes: int  # one cuBLAS workspace
    lt_bytes: int  # one cuBLASLt workspace, where it is not the cuBLAS one
    lt: str  # "per-call" (<= 2.8), "kept" (2.9-2.11) or "shared" (>= 2.12)

    def describe(self) -> str:
        lt = {
            "per-call": f"cuBLASLt {self.lt_bytes:,} B per bias-linear call",
            "kept": f"cuBLASLt {self.lt_bytes:,} B kept per thread",
            "shared": "cuBLASLt sharing it",
        }[self.lt]
        text = f"cuBLAS workspace {self.cublas_bytes:,} B per thread, {lt}"
        text += f" (torch {self.release[0]}.{self.release[1]} rules"
        return text + (")" if self.verified else ", unverified for the installed torch)")


def card_library(card: str) -> LibraryRules | None:
    """The workspace rules of card class `card` under the installed torch; None for the
    CPU kernels' step (`cpu`)."""
    capability = card_capability(card)
    return library_rules(capability) if capability else None


def library_rules(
    capability: tuple[int, int], version: str | None = None, environ=os.environ
) -> LibraryRules:
    """The workspace rules for a card of compute `capability` under torch `version` (the
    installed one by default) and the environment's CUBLAS_WORKSPACE_CONFIG and
    CUBLASLT_WORKSPACE_SIZE."""
    installed = release(version)
    rel = min(max(installed, FIRST_RELEASE), LAST_RELEASE)
    major, minor = capability
    if rel <= (2, 11):
        large = (major, minor) == (9, 0)
    else:
        large = major in (9, 10, 12) or (rel >= (2, 14) and major == 11)
    default = workspace_config_bytes(CUBLAS_LARGE_CONFIG if large else CUBLAS_DEFAULT_CONFIG)
    config = environ.get("CUBLAS_WORKSPACE_CONFIG")
    cublas = (workspace_config_bytes(config) if config else None) or default
    lt_kib = environ.get("CUBLASLT_WORKSPACE_SIZE", "")
    lt_bytes = (int(lt_kib) if lt_kib.isdigit() else CUBLASLT_DEFAULT_KIB) * 1024
    lt = "per-call" if rel <= (2, 8) else "kept" if rel <= (2, 11) else "shared"
    return LibraryRules(rel, rel == installed, cublas, lt_bytes, lt)


def is_host_state(tensor: torch.Tensor) -> bool:
    """Whether optimizer state `tensor` stays on the host in a run on a card: AdamW's step
    counts, 0-dim CPU tensors unless the optimizer is capturable or fused (`_init_group`),
    and the 0-dim increment its step makes for them. The optimizers revbench runs keep no
    other 0-dim state."""
    return tensor.dim() == 0


def blas_kind_by_name(name: str) -> str | None:
    """`blas_call` for a profiler's operator name ("aten::addmm"), which carries no
    arguments: every addmm is taken for a cuBLASLt one (a linear layer's, which is what
    `blas_call` finds for those)."""
    op = name[len("aten::") :] if name.startswith("aten::") else None
    if op is None or op not in BLAS_OPERATORS:
        return None
    return "lt" if op == "addmm" else "blas"


def blas_call(func, args, kwargs) -> str | None:
    """'lt' for an operator CUDA runs on cuBLASLt, 'blas' for one on cuBLAS, else None.

    cuBLASLt takes `addmm` when the bias is a contiguous vector of the output's width,
    beta is 1, the dtype is a floating one and every matrix side is above 1 (Blas.cpp,
    `isInputCompliesAddmmCudaLt`)."""
    name = func.overloadpacket.__name__
    if name not in BLAS_OPERATORS and name not in _COMPOSITE_BLAS:
        return None
    kwargs = kwargs or {}
    if name == "addmm" and len(args) >= 3:
        bias, mat1, mat2 = args[:3]
        if kwargs.get("beta", 1) == 1 and _lt_complies(bias, mat1.shape, mat2.shape[-1]):
            return "lt"
    if name == "linear" and len(args) >= 2:
        # ATen's linear: addmm for a 2-D input, or a contiguous 3-D one flattened to 2-D.
        x, weight = args[:2]
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        if bias is not None and (x.dim() == 2 or (x.dim() == 3 and x.is_contiguous())):
            rows = x.shape[0] * (x.shape[1] if x.dim() == 3 else 1)
            if _lt_complies(bias, (rows, x.shape[-1]), weight.shape[0]):
                return "lt"
    return "blas"


def _lt_complies(bias, mat1_shape, out_features: int) -> bool:
    return (
        bias.dim() == 1
        and bias.is_contiguous()
        and len(mat1_shape) == 2
        and bias.shape[0] == out_features
        and str(bias.dtype) in _LT_DTYPES
        and min(mat1_shape[0], mat1_shape[1], out_features) > 1
    )


@dataclass(frozen=True)
class Workspace:
    """One kept workspace block: whose thread made it and of which library."""

    thread: str  # "forward" (the caller's) or "backward" (autograd's device thread)
    library: str  # "cublas" or "cublaslt"
    nbytes: int


def kept_workspaces(rules: LibraryRules, calls: set[tuple[str, str]]) -> list[Workspace]:
    """The workspaces alive through a steady-state step whose BLAS calls were `calls`
    ((thread, 'blas' | 'lt') pairs), in the order a first step made them."""
    out = []
    for thread in ("forward", "backward"):
        kinds = {kind for t, kind in calls if t == thread}
        if not kinds:
            continue
        # Every release sets up the cuBLAS workspace for a cuBLASLt call's handle too
        # (before 2.12 the Lt handle is the cuBLAS one; from 2.12 Lt uses that workspace).
        out.append(Workspace(thread, "cublas", rules.cublas_bytes))
        if "lt" in kinds and rules.lt == "kept":
            out.append(Workspace(thread, "cublaslt", rules.lt_bytes))
    return out


MODELLED = (
    "cuBLAS workspaces kept per thread that multiplies matrices (library_workspace)",
    "cuBLASLt workspaces (kept in torch 2.9-2.11, per call up to 2.8)",
    "the optimizer's multi-tensor (foreach) implementation, step counts on the host",
    "scaled_dot_product_attention's CUDA kernel (cuDNN, flash, memory-efficient or math"
    " by card, release, dtype and head size) and what it saves",
    "dropout's fused kernel (a one-byte mask)",
)


def card_terms(card: str) -> dict:
    """What an estimate for `card` models and leaves out, for the run's manifest."""
    capability = card_capability(card)
    if capability is None:
        return {"modelled": [], "left_out": ["every card's term: the CPU kernels' step"]}
    return {
        "capability": "{}.{}".format(*capability),
        "library_rules": library_rules(capability).describe(),
        "modelled": list(MODELLED),
        "left_out": list(LEFT_OUT),
    }
