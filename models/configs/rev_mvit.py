"""Rev-MViT's config, published sizes and registration (the network: models/rev_mvit.py)."""

from __future__ import annotations

from dataclasses import dataclass

from .._registry import ReversibleConfig, check_positive_ints, check_rate, register_family


@dataclass(frozen=True, kw_only=True)
class RevMViTConfig(ReversibleConfig):
    embed_dim: int = 96  # stage-1 width; it doubles at every transition
    num_heads: int = 1  # stage-1 heads; they double at every transition
    depth: int = 16
    transitions: tuple[int, ...] = (1, 3, 14)  # block indices of the stage transitions
    mlp_ratio: float = 4.0
    fuse_ratio: float = 2.0  # hidden width of the transition's fusion MLP, times D
    patch_kernel: int = 7
    patch_stride: int = 4
    pool_kernel: int = 3
    kv_stride: int = 4  # stage-1 K/V pooling stride, halved at each transition (min 1)
    in_chans: int = 3
    drop_path_rate: float = 0.1

    @property
    def resolution_multiple(self) -> int:
        return self.patch_stride * 2 ** len(self.transitions)

    def validate(self) -> None:
        check_positive_ints(self, "embed_dim", "num_heads", "depth", "patch_kernel")
        check_positive_ints(self, "patch_stride", "pool_kernel", "kv_stride", "in_chans")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim {self.embed_dim} is invalid: it must divide by num_heads "
                f"{self.num_heads}"
            )
        t = self.transitions
        if isinstance(t, list):  # TOML gives lists
            object.__setattr__(self, "transitions", t := tuple(t))
        ok = (
            isinstance(t, tuple)
            and all(isinstance(i, int) and 1 <= i <= self.depth - 2 for i in t)
            and list(t) == sorted(set(t))
            and all(b - a > 1 for a, b in zip(t, t[1:]))
        )
        if not ok:
            raise ValueError(
                f"transitions {t!r} is invalid: it needs increasing block indices in "
                f"[1, depth - 2] = [1, {self.depth - 2}], no two adjacent (every run of "
                f"reversible blocks, first and last included, must be non-empty)"
            )
        check_rate(self.drop_path_rate, "drop_path_rate")


# ---------------------------------------------------------------------------- registration

# The official weights (PySlowFast, projects/rev); no checksum is published for them.
PUBLISHED_URLS = {"rev_mvit_base": "https://dl.fbaipublicfiles.com/pyslowfast/rev/REV_MVIT_B.pyth"}

# name: (size, config)
VARIANTS: dict[str, tuple[str, RevMViTConfig]] = {
    "rev_mvit_base": ("B", RevMViTConfig()),
}

register_family(
    "Rev-MViT", VARIANTS, "revbench.models.rev_mvit:RevMViT", pretrained_urls=PUBLISHED_URLS
)
