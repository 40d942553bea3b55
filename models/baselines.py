"""Non-reversible baselines from timm (randomly initialised: nothing is downloaded).

The papers compare against these: EfficientNet (the RevBiFPN figure), HRNet (detection
backbones), ViT (RevViT) and ResNet. Published figures are timm's model-card numbers
(params in millions and GMACs at the native resolution), stored rounded as published.
"""

from __future__ import annotations

import timm
from torch import nn

from ._registry import ModelInfo, add_model

_TIMM_SOURCE = "timm model card (params M / GMACs at native resolution)"

# name, family, size, native resolution, resolution multiple, params (M), GMACs
_BASELINES = [
    ("tf_efficientnet_b0", "EfficientNet", "B0", 224, 1, 5.29, 0.40),
    ("tf_efficientnet_b1", "EfficientNet", "B1", 240, 1, 7.79, 0.71),
    ("tf_efficientnet_b2", "EfficientNet", "B2", 260, 1, 9.11, 1.02),
    ("tf_efficientnet_b3", "EfficientNet", "B3", 300, 1, 12.23, 1.87),
    ("tf_efficientnet_b4", "EfficientNet", "B4", 380, 1, 19.34, 4.49),
    ("tf_efficientnet_b5", "EfficientNet", "B5", 456, 1, 30.39, 10.46),
    ("tf_efficientnet_b6", "EfficientNet", "B6", 528, 1, 43.04, 19.40),
    ("tf_efficientnet_b7", "EfficientNet", "B7", 600, 1, 66.35, 38.33),
    # HRNet fuses branches by exact 2x up/down sampling: the side must divide by 32.
    ("hrnet_w18_small", "HRNet", "W18-S", 224, 32, 13.19, 1.61),
    ("hrnet_w18", "HRNet", "W18", 224, 32, 21.30, 4.32),
    ("hrnet_w32", "HRNet", "W32", 224, 32, 41.23, 8.97),
    ("hrnet_w48", "HRNet", "W48", 224, 32, 77.47, 17.34),
    ("hrnet_w64", "HRNet", "W64", 224, 32, 128.06, 28.97),
    ("vit_small_patch16_224", "ViT", "S", 224, 16, 22.05, 4.61),
    ("vit_base_patch16_224", "ViT", "B", 224, 16, 86.57, 17.58),
    ("vit_large_patch16_224", "ViT", "L", 224, 16, 304.33, 61.6),
    ("resnet50", "ResNet", "50", 224, 1, 25.56, 4.11),
    ("resnet101", "ResNet", "101", 224, 1, 44.55, 7.83),
]


def _builder(timm_name: str, family: str):
    def build(img_size: int | None = None, mode: str = "vanilla", **overrides) -> nn.Module:
        if family == "ViT" and img_size is not None:
            # ViT's position embedding is sized by the resolution; convnets take any size.
            overrides["img_size"] = img_size
        return timm.create_model(timm_name, pretrained=False, **overrides)

    build.__name__ = timm_name
    return build


for _name, _family, _size, _res, _multiple, _params_m, _gmacs in _BASELINES:
    add_model(
        ModelInfo(
            name=_name,
            family=_family,
            kind="baseline",
            size=_size,
            native_resolution=_res,
            builder=_builder(_name, _family),
            modes=("vanilla",),
            resolution_multiple=_multiple,
            published_params=round(_params_m * 1e6),
            published_macs=round(_gmacs * 1e9),
            source=_TIMM_SOURCE,
        )
    )
