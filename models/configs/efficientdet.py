"""EfficientDet D0-D7's config and registration (the network: models/efficientdet.py)."""

from __future__ import annotations

from dataclasses import dataclass

from .._registry import ModelConfig, register_model

NATIVE_SIZES = (512, 640, 768, 896, 1024, 1280, 1280, 1536)  # D0-D7


@dataclass(frozen=True, kw_only=True)
class EfficientDetConfig(ModelConfig):
    variant: str = "tf_efficientdet_d0"
    num_classes: int = 90  # effdet's COCO label space

    @property
    def resolution_multiple(self) -> int:
        return 128  # anchors need the side divisible by 2^7 (P7)

    @property
    def task(self) -> str:
        return "detect_square"


for _d, _size in enumerate(NATIVE_SIZES):
    register_model(
        f"tf_efficientdet_d{_d}",
        EfficientDetConfig(variant=f"tf_efficientdet_d{_d}", img_size=_size),
        family="EfficientDet",
        size=f"D{_d}",
        builder="revbench.models.efficientdet:EfficientDet",
    )
