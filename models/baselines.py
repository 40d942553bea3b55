"""Non-reversible baselines from timm (randomly initialised: nothing is downloaded).

The papers compare against these: EfficientNet (the RevBiFPN figure), HRNet (detection
backbones), ViT (RevViT) and ResNet. Any timm.create_model argument is an override
(`create("vit_small_patch16_224", depth=2)`). Published figures:
revbench/data/published.csv (Tan & Le for EfficientNet; timm's model card, marked as its
own count, for the rest).

timm holds the networks, so this one file is the family's config and registration, and
imports no torch (unlike the reversible families, whose configs are in models/configs/).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from ._registry import ModelConfig, check_positive_ints, register_family

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True, kw_only=True)
class TimmConfig(ModelConfig):
    resolution_multiple: int = 1  # the input side must be a multiple of this
    min_resolution: int = 32  # five stride-2 stages leave at least one pixel
    sized_by_input: bool = False  # ViT: the position embedding is built for img_size
    timm_kwargs: tuple[tuple[str, Any], ...] = ()  # other timm.create_model arguments

    def validate(self) -> None:
        check_positive_ints(self, "resolution_multiple", "min_resolution")

    def with_overrides(self, overrides: Mapping[str, Any]) -> TimmConfig:
        """Fields are replaced; any other key is passed to timm.create_model."""
        names = {f.name for f in dataclasses.fields(self)}
        known = {k: v for k, v in overrides.items() if k in names}
        extra = {k: v for k, v in overrides.items() if k not in names}
        timm_kwargs = tuple(sorted({**dict(self.timm_kwargs), **extra}.items()))
        return dataclasses.replace(self, **known, timm_kwargs=timm_kwargs)


def build_timm(name: str, cfg: TimmConfig) -> nn.Module:
    # timm (and torchvision under it) takes seconds to import: loaded when a model is
    # built, not when the registry is read (an answer from the estimate cache builds none)
    import timm

    kwargs = dict(cfg.timm_kwargs, num_classes=cfg.num_classes)
    if cfg.sized_by_input:
        kwargs["img_size"] = cfg.img_size  # convnets take any size and are not told it
    return timm.create_model(name, pretrained=False, **kwargs)


# ---------------------------------------------------------------------------- registration

# HRNet fuses branches by exact 2x up/down sampling: the side must divide by 32.
_HRNET = TimmConfig(img_size=224, resolution_multiple=32)
# ViT's patch embedding tiles the image; its position embedding follows the resolution.
_VIT = TimmConfig(img_size=224, resolution_multiple=16, sized_by_input=True)

# family: {name: (size, config)}
FAMILIES: dict[str, dict[str, tuple[str, TimmConfig]]] = {
    "EfficientNet": {
        "tf_efficientnet_b0": ("B0", TimmConfig(img_size=224)),
        "tf_efficientnet_b1": ("B1", TimmConfig(img_size=240)),
        "tf_efficientnet_b2": ("B2", TimmConfig(img_size=260)),
        "tf_efficientnet_b3": ("B3", TimmConfig(img_size=300)),
        "tf_efficientnet_b4": ("B4", TimmConfig(img_size=380)),
        "tf_efficientnet_b5": ("B5", TimmConfig(img_size=456)),
        "tf_efficientnet_b6": ("B6", TimmConfig(img_size=528)),
        "tf_efficientnet_b7": ("B7", TimmConfig(img_size=600)),
    },
    "HRNet": {
        "hrnet_w18_small": ("W18-S", _HRNET),
        "hrnet_w18": ("W18", _HRNET),
        "hrnet_w32": ("W32", _HRNET),
        "hrnet_w48": ("W48", _HRNET),
        "hrnet_w64": ("W64", _HRNET),
    },
    "ViT": {
        "vit_small_patch16_224": ("S", _VIT),
        "vit_base_patch16_224": ("B", _VIT),
        "vit_large_patch16_224": ("L", _VIT),
    },
    "ResNet": {
        "resnet50": ("50", TimmConfig(img_size=224)),
        "resnet101": ("101", TimmConfig(img_size=224)),
    },
}


def _timm_builder(name: str) -> partial[nn.Module]:
    return partial(build_timm, name)


for _family, _variants in FAMILIES.items():
    register_family(_family, _variants, builder_for=_timm_builder)
