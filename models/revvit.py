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
the walk). The head concatenates the streams to 2C, applies LayerNorm, averages over
tokens and classifies.

Published: RevViT-S 22,434,664 params, 4.58 GMACs (fvcore), 79.4% top-1; RevViT-B
17.5 GMACs; RevViT-L 61 GMACs. The same architecture gives B 87,335,656 and L 305,350,632
parameters (the paper rounds them to 87M and 305M).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor, nn

from ._registry import configure, register_model
from .reversible import MODES, ReversibleModel, ReversibleStack, TwoStreamBlock, check_mode

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
    """F: LayerNorm -> self-attention -> drop path (the mask is replayed by the engine)."""

    def __init__(self, dim: int, num_heads: int, drop_path: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.drop_path(self.attn(self.norm(x)))


class MLPSubBlock(nn.Module):
    """G: LayerNorm -> Linear(C, rC) -> GELU -> Linear(rC, C) -> drop path."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.drop_path(self.fc2(self.act(self.fc1(self.norm(x)))))


class RevViTBlock(TwoStreamBlock):
    """Y1 = X1 + F(X2); Y2 = X2 + G(Y1), with F = attention and G = MLP sub-blocks."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.F = AttentionSubBlock(dim, num_heads, drop_path)
        self.G = MLPSubBlock(dim, mlp_ratio, drop_path)


# ------------------------------------------------------------------------------ model


@dataclass(frozen=True)
class RevViTConfig:
    embed_dim: int  # C, the width of each stream
    depth: int
    num_heads: int
    drop_path_rate: float  # stochastic depth, linear in block index from 0
    mlp_ratio: float = 4.0
    patch_size: int = 16
    img_size: int = 224
    in_chans: int = 3
    num_classes: int = 1000
    mode: str = "reversible"  # reversible | vanilla | checkpoint

    def validate(self) -> None:
        check_positive_ints(self, "embed_dim", "depth", "num_heads", "patch_size", "img_size")
        check_positive_ints(self, "in_chans", "num_classes")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim {self.embed_dim} is invalid: it must divide by num_heads "
                f"{self.num_heads}"
            )
        if self.img_size % self.patch_size:
            raise ValueError(
                f"img_size {self.img_size} is invalid: it must be a multiple of patch_size "
                f"{self.patch_size}"
            )
        check_rate(self.drop_path_rate, "drop_path_rate")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio {self.mlp_ratio} is invalid: it must be positive")
        check_mode(self.mode)


class RevViT(ReversibleModel):
    """Images (B, 3, H, W) -> logits (B, num_classes); `mode` picks the engine's execution."""

    def __init__(self, cfg: RevViTConfig):
        super().__init__()
        cfg.validate()
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
        self.mode = cfg.mode
        init_weights(self)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.cfg.img_size, self.cfg.in_chans)
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, C)
        x1, x2 = self.blocks(x, x)  # both streams start as the embedding
        x = self.norm(torch.cat([x1, x2], dim=-1))  # (B, N, 2C)
        return self.head(x.mean(dim=1))  # (B, K)


# ---------------------------------------------------------------------------- helpers


def drop_path_rates(max_rate: float, depth: int) -> list[float]:
    # Plain Python, not torch.linspace: builders also run on the meta device, where a
    # tensor's values cannot be read.
    return [max_rate * i / max(depth - 1, 1) for i in range(depth)]


def init_weights(model: nn.Module) -> None:
    """ViT initialisation: truncated-normal (std 0.02) linear weights, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_input(x: Tensor, img_size: int, in_chans: int) -> None:
    if x.ndim != 4 or x.shape[1] != in_chans or tuple(x.shape[-2:]) != (img_size, img_size):
        raise ValueError(
            f"input of shape {tuple(x.shape)} is invalid: the model was built for "
            f"(B, {in_chans}, {img_size}, {img_size}); rebuild it with img_size= to change"
        )


def check_positive_ints(cfg: object, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} {value!r} is invalid: it must be a positive int")


def check_rate(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} {value!r} is invalid: it must be in [0, 1)")


# ---------------------------------------------------------------------------- configs

CONFIGS: dict[str, RevViTConfig] = {
    "revvit_small": RevViTConfig(embed_dim=384, depth=12, num_heads=6, drop_path_rate=0.1),
    "revvit_base": RevViTConfig(embed_dim=768, depth=12, num_heads=12, drop_path_rate=0.2),
    # The paper gives no drop path for L; B's rate is used (it changes no count or memory).
    "revvit_large": RevViTConfig(embed_dim=1024, depth=24, num_heads=16, drop_path_rate=0.2),
}

_SOURCE = "Mangalam et al., Reversible Vision Transformers, CVPR 2022"


def _create(name: str, **overrides) -> RevViT:
    return RevViT(configure(CONFIGS[name], overrides))


# ---------------------------------------------------------------------- entry points


@register_model(
    family="RevViT", kind="reversible", size="S", native_resolution=224, modes=MODES,
    resolution_multiple=16, published_params=22_434_664, published_macs=4_580_000_000,
    published_top1=79.4, source=_SOURCE,
)  # fmt: skip
def revvit_small(**overrides) -> RevViT:
    return _create("revvit_small", **overrides)


@register_model(
    family="RevViT", kind="reversible", size="B", native_resolution=224, modes=MODES,
    resolution_multiple=16, published_params=87_000_000, published_macs=17_500_000_000,
    source=_SOURCE + " (params as rounded there)",
)  # fmt: skip
def revvit_base(**overrides) -> RevViT:
    return _create("revvit_base", **overrides)


@register_model(
    family="RevViT", kind="reversible", size="L", native_resolution=224, modes=MODES,
    resolution_multiple=16, published_params=305_000_000, published_macs=61_000_000_000,
    source=_SOURCE + " (params as rounded there)",
)  # fmt: skip
def revvit_large(**overrides) -> RevViT:
    return _create("revvit_large", **overrides)
