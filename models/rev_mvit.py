"""Rev-MViT: the reversible Multiscale Vision Transformer (Mangalam et al., CVPR 2022, §3.3).

MViT (Fan et al., ICCV 2021) widens channels and shrinks the token grid in stages, with
pooling attention: keys and values are pooled (depthwise conv 3x3 + LayerNorm per head),
so attention over a 56x56 grid looks at 14x14 keys. Rev-MViT keeps that design and makes
every stage-preserving block reversible, with two streams of width C:

    Y1 = X1 + F(X2)        F = LayerNorm -> pooling attention (K, V pooled, Q not)
    Y2 = X2 + G(Y1)        G = LayerNorm -> Linear(C, 4C) -> GELU -> Linear(4C, C)

A stage transition changes width and grid, so it cannot be inverted. It is an ordinary
block that stores its activations, and it fuses the streams:

    X = [X1, X2]                      concat: (B, N, 2C); 2C is the next stage's width D
    X = X + MLP(X)                    fusion MLP, hidden 2D
    X = PoolQ(X) + Attn_Q(LN(X))      Q pooled with stride 2 (N -> N/4); the residual is
                                      pooled by the same conv and norm as Q
    X = X + MLP(LN(X))

The next run of reversible blocks starts from two copies of X; each run is its own
ReversibleStack. Drop path: a reversible block drops F's and G's residuals with one mask
per sample, as the official code does; a transition drops its attention and MLP residuals
with a mask each (PySlowFast instead drops the transition's whole output, its pooled
residual included). The head concatenates the final streams: LayerNorm(2C) -> mean -> Linear.

Rev-MViT-B (ImageNet, 224px): patch conv 7x7 stride 4 -> 56x56 tokens of width 96 plus a
learned position embedding; 16 blocks, transitions at blocks 1, 3 and 14 (widths
96/192/384/768, heads 1/2/4/8, grids 56/28/14/7); K/V stride 4 in stage 1, halved at each
transition (4, 2, 1, 1). The side multiple is the patch stride times 2 per transition
(32 for B): every Q pooling halves the grid exactly. In `vanilla` mode the same weights
run under ordinary autograd: the non-reversible twin the paper measures memory against.
Published figures: revbench/data/published.csv. Published weights: PySlowFast's
REV_MVIT_B, its single block list remapped onto the runs and transitions here
(`to_revbench_keys`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import hub
from ._layers import check_input, drop_path_layer, drop_path_rates, init_vit_weights
from .configs.rev_mvit import PUBLISHED_URLS, VARIANTS, RevMViTConfig  # noqa: F401 (the family's sizes, named here too)
from .reversible import ReversibleModel, ReversibleStack, TwoStreamBlock
from .revvit import MLPSubBlock

# ------------------------------------------------------------------------ building blocks


def pooled_size(n: int, kernel: int, stride: int) -> int:
    """Side of a grid after a conv with this kernel and stride, padded by kernel // 2."""
    return (n + 2 * (kernel // 2) - kernel) // stride + 1


class HeadPool(nn.Module):
    """Pools tokens per head: depthwise conv over the grid, then LayerNorm over head dim.

    One conv of `head_dim` channels is shared by all heads (MViT's "conv" pooling).
    """

    def __init__(self, head_dim: int, kernel: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(
            head_dim,
            head_dim,
            kernel,
            stride=stride,
            padding=kernel // 2,
            groups=head_dim,
            bias=False,
        )
        self.norm = nn.LayerNorm(head_dim, eps=1e-6)

    def forward(self, t: Tensor, hw: tuple[int, int]) -> Tensor:
        B, h, N, d = t.shape
        t = t.reshape(B * h, *hw, d).permute(0, 3, 1, 2)  # (B*h, d, H, W)
        t = self.conv(t)  # (B*h, d, H', W')
        t = t.reshape(B, h, d, -1).transpose(2, 3)  # (B, h, N', d)
        return self.norm(t)


class PoolingAttention(nn.Module):
    """Multi-head attention over a (H, W) token grid with pooled Q (optional) and K, V."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        hw: tuple[int, int],
        q_stride: int,
        kv_stride: int,
        kernel: int,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.hw = hw
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        # A pooling with kernel 1 and stride 1 would be the identity: skipped, as in MViT.
        self.pool_q = HeadPool(head_dim, kernel, q_stride) if q_stride > 1 else None
        pool_kv = kernel > 1 or kv_stride > 1
        self.pool_k = HeadPool(head_dim, kernel, kv_stride) if pool_kv else None
        self.pool_v = HeadPool(head_dim, kernel, kv_stride) if pool_kv else None
        self.proj = nn.Linear(dim, dim)

    def fold_heads(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        return x.reshape(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, d)
        if self.pool_q is not None:
            q = self.pool_q(q, self.hw)  # (B, h, N/s^2, d)
        if self.pool_k is not None:
            k, v = self.pool_k(k, self.hw), self.pool_v(v, self.hw)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, h, Nq, d)
        return self.proj(x.transpose(1, 2).reshape(B, q.shape[2], C))  # (B, Nq, C)


class PoolingAttentionSubBlock(nn.Module):
    """F: LayerNorm -> pooling attention (Q not pooled); drop path is the block's."""

    def __init__(self, dim: int, num_heads: int, hw: tuple[int, int], kv_stride: int, kernel: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = PoolingAttention(dim, num_heads, hw, 1, kv_stride, kernel)

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(self.norm(x))


class RevMViTBlock(TwoStreamBlock):
    """Stage-preserving block: Y1 = X1 + M * F(X2); Y2 = X2 + M * G(Y1), M the drop path
    mask shared by F and G (one per sample, as the official Rev-MViT)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        hw: tuple[int, int],
        kv_stride: int,
        kernel: int,
        mlp_ratio: float,
        drop_path: float,
    ):
        super().__init__()
        self.F = PoolingAttentionSubBlock(dim, num_heads, hw, kv_stride, kernel)
        self.G = MLPSubBlock(dim, mlp_ratio)
        self.drop_path = drop_path


class StageTransition(nn.Module):
    """Fuses the two streams (width C each) into one of width D = 2C at a quarter the tokens.

    Ordinary autograd: its activations are stored like any non-reversible layer's.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        hw: tuple[int, int],
        kv_stride: int,
        kernel: int,
        mlp_ratio: float,
        fuse_ratio: float,
        drop_path: float,
    ):
        super().__init__()
        hidden = int(dim * fuse_ratio)
        self.fuse = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = PoolingAttention(dim, num_heads, hw, 2, kv_stride, kernel)
        self.drop_path = drop_path_layer(drop_path)
        self.mlp = MLPSubBlock(dim, mlp_ratio, drop_path)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        x = torch.cat([x1, x2], dim=-1)  # (B, N, D)
        x = x + self.fuse(x)
        # The residual is pooled like Q (same conv and norm), so both sides have N/4 tokens.
        res = self.attn.pool_q(self.attn.fold_heads(x), self.attn.hw)  # (B, h, N/4, d)
        res = res.transpose(1, 2).flatten(2)  # (B, N/4, D)
        x = res + self.drop_path(self.attn(self.norm(x)))
        # In the streams' dtype: under CPU autocast LayerNorm returns bf16 (CUDA's returns
        # fp32), and a half-precision stream would make every inversion in the next run
        # lossy.
        return (x + self.mlp(x)).to(x1.dtype)  # (B, N/4, D)


# ------------------------------------------------------------------------------ model


class RevMViT(ReversibleModel):
    """Images (B, 3, H, W) -> logits (B, num_classes).

    `layers` alternates reversible runs (ReversibleStack) and StageTransition blocks.
    """

    def __init__(self, cfg: RevMViTConfig):
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        side = cfg.img_size // cfg.patch_stride
        C, heads, kv_stride = cfg.embed_dim, cfg.num_heads, cfg.kv_stride
        self.patch_embed = nn.Conv2d(
            cfg.in_chans,
            C,
            cfg.patch_kernel,
            stride=cfg.patch_stride,
            padding=cfg.patch_kernel // 2,
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, side * side, C))
        rates = drop_path_rates(cfg.drop_path_rate, cfg.depth)
        layers: list[nn.Module] = []
        run: list[RevMViTBlock] = []
        k = cfg.pool_kernel
        for i, rate in enumerate(rates):
            if i in cfg.transitions:
                layers.append(ReversibleStack(run, mode=cfg.mode))
                run = []
                C, heads = 2 * C, 2 * heads
                layers.append(
                    StageTransition(
                        C,
                        heads,
                        (side, side),
                        max(kv_stride // 2, 1),
                        k,
                        cfg.mlp_ratio,
                        cfg.fuse_ratio,
                        rate,
                    )
                )
                # As in MViT, the K/V stride halves at the Q-pooling block itself, so the
                # transition already pools K/V with the next stage's stride.
                side, kv_stride = pooled_size(side, k, 2), max(kv_stride // 2, 1)
            else:
                run.append(RevMViTBlock(C, heads, (side, side), kv_stride, k, cfg.mlp_ratio, rate))
        layers.append(ReversibleStack(run, mode=cfg.mode))
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(2 * C, eps=1e-6)
        self.head = nn.Linear(2 * C, cfg.num_classes)
        init_vit_weights(self)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.cfg.img_size, self.cfg.in_chans)
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, C)
        x1 = x2 = x
        for layer in self.layers:
            if isinstance(layer, ReversibleStack):
                x1, x2 = layer(x1, x2)
            else:
                x1 = x2 = layer(x1, x2)  # the next run starts from two copies
        x = self.norm(torch.cat([x1, x2], dim=-1))  # (B, N, 2C)
        return self.head(x.mean(dim=1))  # (B, K)

    def load_pretrained(self, source: str | os.PathLike, check_hash: bool = True) -> None:
        """Load a checkpoint (path or URL, PySlowFast's or revbench's layout) strictly; the
        position embedding is resampled (bicubic) to the model's token grid."""
        state = to_revbench_keys(hub.load_state_dict(source, check_hash=check_hash), self.cfg)
        if "pos_embed" in state:
            grid = self.cfg.img_size // self.cfg.patch_stride
            state["pos_embed"] = hub.fit_pos_embed(state["pos_embed"], grid)
        hub.load_strict(self, state)


# ------------------------------------------------------------------ published checkpoints


def pyslowfast_keys(cfg: RevMViTConfig) -> list[tuple[str, str]]:
    """Rules from PySlowFast's MViT with MVIT.REV on (q, k, v fused by hub.fuse_qkv) to
    revbench's names. PySlowFast numbers its blocks 0..depth-1 in one list; revbench
    keeps each reversible run and each transition as its own entry of `layers`.
    """
    rules = [(r"^patch_embed\.proj\.", "patch_embed."), (r"^head\.projection\.", "head.")]
    layer, position = 0, 0  # revbench: layers[layer] is a run, position its next block
    for i in range(cfg.depth):
        src = rf"^rev_backbone\.layers\.{i}\."
        if i in cfg.transitions:
            dst = f"layers.{layer + 1}."
            rules += [
                (src + r"pre_q_fuse\.fuse_fn\.fc1\.", dst + "fuse.0."),
                (src + r"pre_q_fuse\.fuse_fn\.fc2\.", dst + "fuse.2."),
                (src + r"F\.norm\.", dst + "norm."),
                (src + r"F\.attn\.", dst + "attn."),
                (src + r"G\.norm\.", dst + "mlp.norm."),
                (src + r"G\.mlp\.", dst + "mlp."),
            ]
            layer, position = layer + 2, 0
        else:
            dst = f"layers.{layer}.{position}."
            rules += [
                (src + r"F\.", dst + "F."),
                (src + r"G\.norm\.", dst + "G.norm."),
                (src + r"G\.mlp\.", dst + "G."),
            ]
            position += 1
    return rules


# Inside an attention: PySlowFast's pooling conv and its norm are siblings, pool_x and
# norm_x; revbench's HeadPool holds both.
POOLING_KEYS = [
    (r"\.attn\.pool_([qkv])\.weight$", r".attn.pool_\1.conv.weight"),
    (r"\.attn\.norm_([qkv])\.", r".attn.pool_\1.norm."),
]


def to_revbench_keys(state: Mapping[str, Tensor], cfg: RevMViTConfig) -> dict[str, Tensor]:
    """Rev-MViT weights in PySlowFast's or revbench's own layout, in revbench's names."""
    if not any(k.startswith("rev_backbone.layers.") for k in state):
        return dict(state)
    state = hub.rename_keys(hub.fuse_qkv(state), pyslowfast_keys(cfg))
    state = hub.rename_keys(state, POOLING_KEYS)
    # PySlowFast pools with Conv3d kernels (1, k, k) on a one-frame clip: drop the time axis.
    return {
        k: v.squeeze(2) if k.endswith(".conv.weight") and v.ndim == 5 else v
        for k, v in state.items()
    }
