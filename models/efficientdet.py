"""EfficientDet D0-D7 (Tan et al., CVPR 2020) from the `effdet` package, with its own losses.

The baseline whose neck, BiFPN, RevSilo makes reversible. Built with
`effdet.create_model("tf_efficientdet_dN", bench_task="train", pretrained=False,
pretrained_backbone=False)` (nothing downloaded): EfficientNet B0-B6 backbone, BiFPN, class
and box heads, and `DetBenchTrain`, which labels anchors and computes the focal and box
losses. Registered at the native square sizes 512 ... 1536 (task `detect_square`).

The model is called on `(images, targets)` as every revbench detector is (torchvision's
target format, boxes x1 y1 x2 y2); effdet wants (B, N, 4) boxes as y1 x1 y2 x2 and (B, N)
classes, converted here. Training returns `{"loss": focal + 50 x box}`, effdet's own
total. Called on a bare image tensor it runs the network without the losses (counting).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._registry import ModelConfig, register_model

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


class EfficientDet(nn.Module):
    """effdet's DetBenchTrain called on `(images, targets)`."""

    def __init__(self, cfg: EfficientDetConfig):
        super().__init__()
        from effdet import create_model  # imported here: effdet is only needed for these

        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.bench = create_model(
            cfg.variant,
            bench_task="train",
            pretrained=False,
            pretrained_backbone=False,
            bench_labeler=True,  # label anchors from box targets inside the step
            num_classes=cfg.num_classes,
            image_size=(cfg.img_size, cfg.img_size),
        )

    def forward(self, batch):
        if isinstance(batch, Tensor):
            return self.bench.model(batch)  # (class outputs, box outputs) per level
        images, targets = batch
        target = {
            "bbox": torch.stack([t["boxes"][:, [1, 0, 3, 2]] for t in targets]),  # (B, N, 4)
            "cls": torch.stack([t["labels"] for t in targets]).float(),  # (B, N)
        }
        if not self.training:
            b = images.shape[0]
            target["img_scale"] = images.new_ones(b)
            target["img_size"] = images.new_tensor([images.shape[-2:][::-1]] * b)
            return self.bench(images, target)["detections"]
        return {"loss": self.bench(images, target)["loss"]}


for _d, _size in enumerate(NATIVE_SIZES):
    register_model(
        f"tf_efficientdet_d{_d}",
        EfficientDetConfig(variant=f"tf_efficientdet_d{_d}", img_size=_size),
        family="EfficientDet",
        size=f"D{_d}",
        builder=EfficientDet,
    )
