"""RevCol's config, published sizes and registration (the network: models/revcol.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .._registry import ReversibleConfig, check_positive_ints, check_rate, register_family

STEM_STRIDE = 4  # the stem's patch conv; each of the three down fusions halves again


@dataclass(frozen=True, kw_only=True)
class RevColConfig(ReversibleConfig):
    channels: tuple[int, int, int, int] = (64, 128, 256, 512)
    layers: tuple[int, int, int, int] = (2, 2, 4, 2)  # ConvNeXt blocks per level
    num_columns: int = 4
    drop_path: float = 0.1  # rates linspace(0, drop_path, sum(layers)) within a column
    kernel_size: int = 3
    # Store each column's inputs (exact); False rebuilds them by inversion (see RevCol).
    store_columns: bool = True
    intermediate_supervision: bool = False  # 3 extra classifiers + 3 decoders

    memory_only: ClassVar[tuple[str, ...]] = (*ReversibleConfig.memory_only, "store_columns")

    @property
    def resolution_multiple(self) -> int:
        return STEM_STRIDE * 2**3  # level 3's stride

    @property
    def task(self) -> str:
        # In training the model returns a RevColOutput, whose loss is
        # `intermediate_supervision_loss`, not logits.
        return "intermediate_supervision" if self.intermediate_supervision else "classify"

    def validate(self) -> None:
        for name in ("channels", "layers"):
            value = tuple(getattr(self, name))
            if len(value) != 4 or any(not isinstance(v, int) or v < 1 for v in value):
                raise ValueError(f"{name} {value!r} is invalid; valid: 4 positive ints")
            object.__setattr__(self, name, value)
        check_positive_ints(self, "num_columns")
        if self.intermediate_supervision and self.num_columns % 4:
            raise ValueError(
                f"num_columns {self.num_columns} is invalid with intermediate_supervision; "
                "valid: a multiple of 4"
            )
        check_rate(self.drop_path, "drop_path")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size {self.kernel_size} is invalid; valid: an odd int")


# ----------------------------------------------------------------------------- registration

# The official ImageNet-1k classifiers (megvii-research/RevCol releases; no checksum is
# published). T, S and B were trained with intermediate supervision, so their files also
# hold the auxiliary heads and decoders; L is the ImageNet-22k model fine-tuned at 224 px.
_RELEASES = "https://github.com/megvii-research/RevCol/releases/download/checkpoint/"
PUBLISHED_URLS = {
    "revcol_tiny": _RELEASES + "revcol_tiny_1k.pth",
    "revcol_small": _RELEASES + "revcol_small_1k.pth",
    "revcol_base": _RELEASES + "revcol_base_1k.pth",
    "revcol_large": _RELEASES + "revcol_large_22k_1kft_224.pth",
}

# name: (size, config)
VARIANTS: dict[str, tuple[str, RevColConfig]] = {
    "revcol_tiny": ("T", RevColConfig(layers=(2, 2, 4, 2), num_columns=4, drop_path=0.1)),
    "revcol_small": ("S", RevColConfig(layers=(2, 2, 4, 2), num_columns=8, drop_path=0.3)),
    "revcol_base": (
        "B",
        RevColConfig(
            channels=(72, 144, 288, 576), layers=(1, 1, 3, 2), num_columns=16, drop_path=0.4
        ),
    ),
    "revcol_large": (
        "L",
        RevColConfig(
            channels=(128, 256, 512, 1024), layers=(1, 2, 6, 2), num_columns=8, drop_path=0.5
        ),
    ),
}

register_family("RevCol", VARIANTS, "revbench.models.revcol:RevCol", pretrained_urls=PUBLISHED_URLS)
