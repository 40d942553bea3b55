"""Faster R-CNN and Mask R-CNN (torchvision) on RevBiFPN, HRNetV2p and ResNet-FPN backbones.

The RevBiFPN paper (Chiley et al., MLSys 2023) trains detectors whose backbone is RevBiFPN
"as a drop-in replacement" for HRNet, fine-tuned with MMDetection's HRNet configs; this file
builds the same detectors from torchvision's `FasterRCNN` / `MaskRCNN` classes (randomly
initialised, nothing downloaded) so revbench can measure their training memory:

- RevBiFPN S0-S6: the four neck maps of `create("revbifpn_sN", features_only=True)`
  (strides 4-32) into an HRNetV2p neck. Reversible, vanilla and checkpoint modes on the
  same weights, as for classification.
- HRNetV2p-W18/W32/W48: timm's HRNet with `features_only` (the four branch outputs, strides
  4-32) into the HRNetV2p neck.
- ResNet-50/101-FPN: torchvision's `resnet_fpn_backbone` (frozen BatchNorm, stem and
  layer1 frozen: torchvision's and MMDetection's default).

HRNetV2p neck (Wang et al., TPAMI 2020; MMDetection's HRFPN), from branches x_k at stride
4 * 2^k:

    z   = conv1x1(concat(x_0, up(x_1), up(x_2), up(x_3)))   # up: bilinear to x_0's size
    p_i = conv3x3(avgpool_{2^i}(z)),  i = 0..4                # five levels, strides 4-64

The detector takes `(images, targets)` (the harness's `detect` and `segment` tasks): in
training it returns torchvision's loss dict, in eval its detections. Called on a bare image
tensor it runs the data-independent part for counting, as MMDetection's `get_flops` does:
backbone, neck, RPN head, the box head on 1000 RoIs and (Mask R-CNN) the mask head on 100.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import create
from .configs.detection import DATA_SIZES, DetectorConfig, RevDetectorConfig  # noqa: F401 (the detectors' configs, named here too)
from .detection_names import COCO_IMAGE, dense_image_shape  # noqa: F401
from .reversible import ReversibleModel

COUNT_BOX_ROIS = 1000  # MMDetection's get_flops: the box head on 1000 proposals
COUNT_MASK_ROIS = 100  # and the mask head on the first 100
NECK_CHANNELS = 256
NECK_LEVELS = 5


class HRFPN(nn.Module):
    """HRNetV2p neck: every branch upsampled to the finest, concatenated, reduced by a 1x1
    conv, average-pooled to `num_levels` levels, a 3x3 conv per level."""

    def __init__(
        self,
        in_channels: list[int],
        out_channels: int = NECK_CHANNELS,
        num_levels: int = NECK_LEVELS,
    ):
        super().__init__()
        self.reduce = nn.Conv2d(sum(in_channels), out_channels, 1)
        self.convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in range(num_levels)
        )

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        size = feats[0].shape[-2:]
        ups = [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats[1:]]
        z = self.reduce(torch.cat([feats[0], *ups], dim=1))  # (B, 256, H/4, W/4)
        levels = [z] + [F.avg_pool2d(z, 2**i, 2**i) for i in range(1, len(self.convs))]
        return [conv(p) for conv, p in zip(self.convs, levels)]


class PyramidBackbone(nn.Module):
    """A trunk giving four maps at strides 4-32 and the HRNetV2p neck; torchvision's
    backbone interface (`out_channels`, an OrderedDict of levels "0".."3", "pool")."""

    def __init__(self, trunk: nn.Module, in_channels: list[int]):
        super().__init__()
        self.body = trunk
        self.neck = HRFPN(in_channels)
        self.out_channels = NECK_CHANNELS

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        levels = self.neck(list(self.body(x)))
        names = [str(i) for i in range(len(levels) - 1)] + ["pool"]
        return OrderedDict(zip(names, levels))


def keep_proposals_to_maximum(rpn: nn.Module) -> None:
    """Make `rpn` keep, in training, its top proposals up to its post-NMS maximum: NMS at
    threshold 1 suppresses none (see `Detector`)."""
    filter_proposals = rpn.filter_proposals  # torchvision's, bound

    def without_suppression(*args, **kwargs):
        if not rpn.training:
            return filter_proposals(*args, **kwargs)
        threshold, rpn.nms_thresh = rpn.nms_thresh, 1.0
        try:
            return filter_proposals(*args, **kwargs)
        finally:
            rpn.nms_thresh = threshold

    rpn.filter_proposals = without_suppression


def fill_positives_to_cap(roi_heads: nn.Module) -> None:
    """Make `roi_heads` assign positives up to its sampler's cap (see `Detector`)."""
    from torchvision.ops import box_iou

    assign = roi_heads.assign_targets_to_proposals  # torchvision's, bound
    sampler = roi_heads.fg_bg_sampler
    cap = int(sampler.batch_size_per_image * sampler.positive_fraction)

    def assign_up_to_cap(proposals, gt_boxes, gt_labels):
        matched_idxs, labels = assign(proposals, gt_boxes, gt_labels)
        for i, (boxes, gts) in enumerate(zip(proposals, gt_boxes)):
            missing = min(cap, len(boxes)) - int((labels[i] > 0).sum())
            if missing <= 0 or gts.numel() == 0:
                continue
            overlap, best = box_iou(gts, boxes).max(dim=0)  # (P,) each proposal's best target
            overlap[labels[i] > 0] = -1.0  # already positive
            chosen = overlap.argsort(descending=True, stable=True)[:missing]
            matched_idxs[i][chosen] = best[chosen]
            labels[i][chosen] = gt_labels[i][best[chosen]].to(labels[i].dtype)
        return matched_idxs, labels

    roi_heads.assign_targets_to_proposals = assign_up_to_cap


def _make_backbone(cfg: DetectorConfig) -> nn.Module:
    # timm (and torchvision under it) takes seconds to import: loaded when a model is
    # built, not when the registry is read (an answer from the estimate cache builds none)
    import timm
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    if cfg.backbone.startswith("revbifpn"):
        trunk = create(cfg.backbone, features_only=True, mode=cfg.mode, img_size=cfg.img_size)
        return PyramidBackbone(trunk, [f["num_chs"] for f in trunk.feature_info])
    if cfg.backbone.startswith("hrnet"):
        trunk = timm.create_model(
            cfg.backbone,
            pretrained=False,
            features_only=True,
            feature_location="",
            out_indices=(1, 2, 3, 4),
        )
        return PyramidBackbone(trunk, trunk.feature_info.channels())
    return resnet_fpn_backbone(backbone_name=cfg.backbone, weights=None, trainable_layers=3)


class Detector(ReversibleModel):
    """A torchvision two-stage detector called on `(images, targets)`; its mode is the
    RevBiFPN trunk's (`set_mode` switches both), "vanilla" for the other trunks.

    Sizes at their maxima (`data_sizes="max"`, the default). Two sizes of a training step
    come from the data, up to a configured maximum: the proposals the RPN keeps after NMS
    (`rpn_post_nms_top_n_train`, 2000 per image), which size the RoI matching, and the
    positive RoIs the sampler draws (up to `box_batch_size_per_image` x
    `positive_fraction`, 512 x 0.25 = 128 per image), which size the box regression loss
    and everything the mask head holds (four 256-channel 14x14 convolutions, the 28x28
    deconvolution and their gradients, per positive). A randomly initialised network on
    synthetic targets gives fewer than a trained one on busy images (ResNet-50-FPN keeps
    about 1,600 proposals per image at 1333x800; positives are about the 7 targets), so a
    measured step would show memory that training exceeds by hundreds of MB. At "max", in
    training: NMS suppresses nothing (its threshold is 1), so the RPN keeps its top
    proposals up to the maximum; and where fewer proposals than the sampler's cap match a
    target, the ones that overlap a target most are made positive (labelled and matched as
    the target they overlap most) until the sampler can take its cap. The step then holds
    what a step at the configured maxima holds. "drawn" keeps torchvision's step as is;
    inference is never changed.
    """

    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        from torchvision.models.detection import FasterRCNN, MaskRCNN  # seconds: see above

        head = MaskRCNN if cfg.head == "mask_rcnn" else FasterRCNN
        height, width = dense_image_shape(cfg.img_size)
        # min/max sizes equal to the task's image: torchvision's transform keeps the scale
        # (as MMDetection's resize to 1333x800 does) and pads to a multiple of 32.
        self.detector = head(
            _make_backbone(cfg),
            num_classes=cfg.num_classes,
            min_size=height,
            max_size=width,
            rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
            box_batch_size_per_image=cfg.box_batch_size_per_image,
        )
        self.detector.transform.size_divisible = 32
        if cfg.data_sizes == "max":
            keep_proposals_to_maximum(self.detector.rpn)
            fill_positives_to_cap(self.detector.roi_heads)

    @staticmethod
    def image_shape(resolution: int) -> tuple[int, int]:
        """(height, width) of this model's input at `resolution` (counting reads it)."""
        return dense_image_shape(resolution)

    @contextlib.contextmanager
    def resized_to(self, resolution: int) -> Iterator[None]:
        """Take images of `resolution` at their own size for a while.

        The transform scales every image to the configured size (as MMDetection's resize
        does), so without this a small batch would run at full size: the estimator's warm-up
        step, which only has to create the optimizer state, uses it to stay cheap.
        """
        transform = self.detector.transform
        saved = transform.min_size, transform.max_size
        height, width = dense_image_shape(resolution)
        transform.min_size, transform.max_size = (height,), width
        try:
            yield
        finally:
            transform.min_size, transform.max_size = saved

    def forward(self, batch):
        if isinstance(batch, Tensor):
            return self.forward_dummy(batch)
        images, targets = batch
        images = list(images.unbind(0))
        if self.training:
            return self.detector(images, targets)  # {loss name: scalar}
        return self.detector(images)

    def forward_dummy(self, images: Tensor) -> tuple[Tensor, ...]:
        """The data-independent compute of one forward, for counting (no NMS, no sampling)."""
        det = self.detector
        # Padded to a multiple of 32 at the bottom right, as torchvision's transform batches.
        d = det.transform.size_divisible
        h, w = images.shape[-2:]
        images = F.pad(images, (0, -w % d, 0, -h % d))
        feats = list(det.backbone(images).values())
        objectness, deltas = det.rpn.head(feats)
        rois = images.new_zeros(images.shape[0] * COUNT_BOX_ROIS, NECK_CHANNELS, 7, 7)
        scores, boxes = det.roi_heads.box_predictor(det.roi_heads.box_head(rois))
        out = (*objectness, *deltas, scores, boxes)
        if det.roi_heads.has_mask():
            rois = images.new_zeros(images.shape[0] * COUNT_MASK_ROIS, NECK_CHANNELS, 14, 14)
            out += (det.roi_heads.mask_predictor(det.roi_heads.mask_head(rois)),)
        return out
