"""RevViT: Reversible Vision Transformers (Mangalam et al., CVPR 2022).

A ViT whose residual stream is split in two. The patch embedding (conv P x P, stride P,
plus a learned absolute position embedding; no class token) is copied into both streams
X1 and X2, which then pass through reversible blocks:

    Y1 = X1 + F(X2)        F = LayerNorm -> multi-head self-attention
    Y2 = X2 + G(Y1)        G = LayerNorm -> Linear(C, 4C) -> GELU -> Linear(4C, C)

Neither F nor G has a skip of its own; the coupling is the residual. Each block's inputs
are rebuilt from its outputs during backward,

    X2 = Y2 - G(Y1)        X1 = Y1 - F(X2)

so training keeps only the final streams, whatever the depth (models/reversible.py runs
the walk). Drop path (rates linear in depth) is the block's, as in the official code
(PySlowFast, mmpretrain): one mask M per sample scales both residuals, Y1 = X1 + M F(X2)
and Y2 = X2 + M G(Y1), so a dropped sample skips the whole block. The head concatenates
the streams to 2C, applies LayerNorm, averages over tokens and classifies.

The side multiple is the patch size (`create("revvit_small", patch_size=8, img_size=40)`
gives a 5 x 5 token grid). Published figures: revbench/data/published.csv. Published
weights (`create(..., pretrained=)`): mmpretrain's conversions of S and B, or PySlowFast's
own files, remapped into revbench's names (see `to_revbench_keys`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import hub
from ._layers import check_input, drop_path_layer, drop_path_rates, init_vit_weights
from .configs.revvit import PUBLISHED_URLS, VARIANTS, RevViTConfig  # noqa: F401 (the family's sizes, named here too)
from .reversible import ReversibleModel, ReversibleStack, TwoStreamBlock

# ------------------------------------------------------------------------ building blocks


class SelfAttention(nn.Module):
    """Multi-head self-attention: fused q, k, v projection (with bias), then output proj."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, d)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))  # (B, N, C)


class AttentionSubBlock(nn.Module):
    """F: LayerNorm -> self-attention (drop path is the block's, shared with G)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads)

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(self.norm(x))


class MLPSubBlock(nn.Module):
    """G: LayerNorm -> Linear(C, rC) -> GELU -> Linear(rC, C) [-> a drop path of its own,
    for a non-reversible block; a reversible block's drop path is shared with F]."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop_path = drop_path_layer(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop_path(self.fc2(self.act(self.fc1(self.norm(x)))))


class RevViTBlock(TwoStreamBlock):
    """Y1 = X1 + M * F(X2); Y2 = X2 + M * G(Y1), with F = attention and G = MLP sub-blocks
    and M the drop path mask shared by both (one per sample, as the official RevViT)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.F = AttentionSubBlock(dim, num_heads)
        self.G = MLPSubBlock(dim, mlp_ratio)
        self.drop_path = drop_path


# ------------------------------------------------------------------------------ model


class RevViT(ReversibleModel):
    """Images (B, 3, H, W) -> logits (B, num_classes); `mode` picks the engine's execution."""

    def __init__(self, cfg: RevViTConfig):
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        C = cfg.embed_dim
        num_patches = (cfg.img_size // cfg.patch_size) ** 2
        self.patch_embed = nn.Conv2d(cfg.in_chans, C, cfg.patch_size, stride=cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, C))
        rates = drop_path_rates(cfg.drop_path_rate, cfg.depth)
        self.blocks = ReversibleStack(
            [RevViTBlock(C, cfg.num_heads, cfg.mlp_ratio, p) for p in rates], mode=cfg.mode
        )
        self.norm = nn.LayerNorm(2 * C, eps=1e-6)
        self.head = nn.Linear(2 * C, cfg.num_classes)
        init_vit_weights(self)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.cfg.img_size, self.cfg.in_chans)
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, C)
        x1, x2 = self.blocks(x, x)  # both streams start as the embedding
        x = self.norm(torch.cat([x1, x2], dim=-1))  # (B, N, 2C)
        return self.head(x.mean(dim=1))  # (B, K)

    def load_pretrained(self, source: str | os.PathLike, check_hash: bool = True) -> None:
        """Load a checkpoint (path or URL, any layout `to_revbench_keys` reads) strictly.

        mmpretrain's files may carry a class token and its position slot (197 = 1 + 14 x 14),
        which RevViT does not use: both are dropped. The position embedding is resampled to
        the model's token grid (bicubic), so weights load at any resolution.
        """
        state = to_revbench_keys(hub.load_state_dict(source, check_hash=check_hash))
        state.pop("cls_token", None)
        if "pos_embed" in state:
            grid = self.cfg.img_size // self.cfg.patch_size
            state["pos_embed"] = hub.fit_pos_embed(state["pos_embed"], grid)
        hub.load_strict(self, state)


# ------------------------------------------------------------------ published checkpoints

# mmpretrain's RevVisionTransformer + LinearClsHead (its tools/model_converters output).
MMPRETRAIN_KEYS = [
    (r"^backbone\.patch_embed\.projection\.", "patch_embed."),
    (r"^backbone\.layers\.(\d+)\.ln1\.", r"blocks.\1.F.norm."),
    (r"^backbone\.layers\.(\d+)\.attn\.", r"blocks.\1.F.attn."),
    (r"^backbone\.layers\.(\d+)\.ln2\.", r"blocks.\1.G.norm."),
    (r"^backbone\.layers\.(\d+)\.ffn\.layers\.0\.0\.", r"blocks.\1.G.fc1."),
    (r"^backbone\.layers\.(\d+)\.ffn\.layers\.1\.", r"blocks.\1.G.fc2."),
    (r"^backbone\.ln1\.", "norm."),
    (r"^backbone\.", ""),  # pos_embed, cls_token
    (r"^head\.fc\.", "head."),
]

# PySlowFast's MViT model with MVIT.REV on (q, k and v fused by hub.fuse_qkv first).
PYSLOWFAST_KEYS = [
    (r"^patch_embed\.proj\.", "patch_embed."),
    (r"^rev_backbone\.layers\.(\d+)\.F\.", r"blocks.\1.F."),
    (r"^rev_backbone\.layers\.(\d+)\.G\.mlp\.", r"blocks.\1.G."),
    (r"^rev_backbone\.layers\.(\d+)\.G\.norm\.", r"blocks.\1.G.norm."),
    (r"^head\.projection\.", "head."),
]


def to_revbench_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """RevViT weights in mmpretrain's, PySlowFast's or revbench's own layout, in revbench's."""
    if any(k.startswith("backbone.layers.") for k in state):
        return hub.rename_keys(state, MMPRETRAIN_KEYS)
    if any(k.startswith("rev_backbone.layers.") for k in state):
        return hub.rename_keys(hub.fuse_qkv(state), PYSLOWFAST_KEYS)
    return dict(state)
