"""RevViT's config, published sizes and registration (the network: models/revvit.py)."""

from __future__ import annotations

from dataclasses import dataclass

from .._registry import ReversibleConfig, check_positive_ints, check_rate, register_family


@dataclass(frozen=True, kw_only=True)
class RevViTConfig(ReversibleConfig):
    embed_dim: int  # C, the width of each stream
    depth: int
    num_heads: int
    drop_path_rate: float  # stochastic depth, linear in block index from 0
    mlp_ratio: float = 4.0
    patch_size: int = 16
    in_chans: int = 3

    @property
    def resolution_multiple(self) -> int:
        return self.patch_size  # the patch embedding tiles the image

    def validate(self) -> None:
        check_positive_ints(self, "embed_dim", "depth", "num_heads", "patch_size", "in_chans")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim {self.embed_dim} is invalid: it must divide by num_heads "
                f"{self.num_heads}"
            )
        check_rate(self.drop_path_rate, "drop_path_rate")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio {self.mlp_ratio} is invalid: it must be positive")


# ---------------------------------------------------------------------------- registration

# PySlowFast's REV_VIT_S/B.pyth as converted by mmpretrain, whose file names carry the first
# 8 hex digits of the SHA-256 (checked on load). mmpretrain's README swaps the two links;
# its metafile and the hashes pair them as here.
_MMPRETRAIN = "https://download.openmmlab.com/mmclassification/v0/revvit/"
PUBLISHED_URLS = {
    "revvit_small": _MMPRETRAIN + "revvit-small_3rdparty_in1k_20221213-a3a34f5c.pth",
    "revvit_base": _MMPRETRAIN + "revvit-base_3rdparty_in1k_20221213-87a7b0a5.pth",
}

# name: (size, config)
VARIANTS: dict[str, tuple[str, RevViTConfig]] = {
    "revvit_small": ("S", RevViTConfig(embed_dim=384, depth=12, num_heads=6, drop_path_rate=0.1)),
    "revvit_base": ("B", RevViTConfig(embed_dim=768, depth=12, num_heads=12, drop_path_rate=0.2)),
    # The paper gives no drop path for L; B's rate is used (it changes no count or memory).
    "revvit_large": (
        "L",
        RevViTConfig(embed_dim=1024, depth=24, num_heads=16, drop_path_rate=0.2),
    ),
}

register_family("RevViT", VARIANTS, "revbench.models.revvit:RevViT", pretrained_urls=PUBLISHED_URLS)
