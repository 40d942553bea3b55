"""EfficientDet D0-D7 (Tan et al., CVPR 2020) from the `effdet` package, with its own losses.

The baseline whose neck, BiFPN, RevSilo makes reversible. Built with
`effdet.create_model("tf_efficientdet_dN", bench_task="train", pretrained=False,
pretrained_backbone=False)` (nothing downloaded): EfficientNet B0-B6 backbone, BiFPN, class
and box heads, and `DetBenchTrain`, which computes the focal and box losses. Registered at
the native square sizes 512 ... 1536 (task `detect_square`).

Anchors are labelled outside the step, as effdet's own training script does by default (its
loader labels them; `bench_labeler=False`): `encode_targets` turns torchvision-format
targets (boxes x1 y1 x2 y2, labels) into effdet's per-level class and box targets and the
number of positive anchors, on real CPU tensors, once per batch. What is left in the step,
network and losses, sizes every tensor from the image size alone, so the estimator runs it
on fake tensors like a classifier (no host memory of the figure's size; D7 at 1536 px in
seconds) instead of the real step torchvision's data-dependent detectors need.

The model is called on `(images, targets)`, targets as `encode_targets` made them.
Training returns `{"loss": focal + 50 x box}`, effdet's own total. Called on a bare image
tensor it runs the network without the losses (counting).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import unset_fake_temporarily

from .configs.efficientdet import NATIVE_SIZES, EfficientDetConfig  # noqa: F401 (the family's sizes, named here too)


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
            bench_labeler=False,  # encode_targets labels anchors, as effdet's loader does
            num_classes=cfg.num_classes,
            image_size=(cfg.img_size, cfg.img_size),
        )
        # effdet's AnchorLabeler, built on first use. Kept out of the module's attributes: it
        # is the data pipeline's, so its anchor boxes are neither weights nor moved with them.
        self.__dict__["_labeler"] = None

    @torch.no_grad()
    def encode_targets(self, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """effdet's training targets of a batch of torchvision-format targets: for each level
        l, `label_cls_l` (B, H_l, W_l, A) and `label_bbox_l` (B, H_l, W_l, 4A), and
        `label_num_positives` (B,). Computed on real CPU tensors even under a fake-tensor
        mode: labelling matches boxes to anchors, which needs their values."""
        from effdet.anchors import AnchorLabeler, Anchors

        with unset_fake_temporarily(), torch.device("cpu"):
            if self._labeler is None:
                anchors = Anchors.from_config(self.bench.config)
                self.__dict__["_labeler"] = AnchorLabeler(
                    anchors, self.num_classes, match_threshold=0.5
                )
            boxes = torch.stack([t["boxes"][:, [1, 0, 3, 2]] for t in targets])  # (B, N, 4) yxyx
            classes = torch.stack([t["labels"] for t in targets]).float()  # (B, N)
            cls, box, positives = self._labeler.batch_label_anchors(boxes, classes)
        return {
            **{f"label_cls_{level}": c for level, c in enumerate(cls)},
            **{f"label_bbox_{level}": b for level, b in enumerate(box)},
            "label_num_positives": positives,
        }

    def forward(self, batch):
        if isinstance(batch, Tensor):
            return self.bench.model(batch)  # (class outputs, box outputs) per level
        images, target = batch
        if not self.training:
            target = dict(target)
            b = images.shape[0]
            target["img_scale"] = images.new_ones(b)
            target["img_size"] = images.new_tensor([images.shape[-2:][::-1]] * b)
            return self.bench(images, target)["detections"]
        return {"loss": self.bench(images, target)["loss"]}
