"""The detectors' names, configs and registration, without torch (the networks:
models/detection.py).

The published detector figures are keyed by backbone and head (`hrnet_w18`,
`faster_rcnn`); the report maps them to revbench's detector names
(`faster_rcnn_hrnetv2p_w18`) from the tables here, not from the registry. The dense tasks
size their images with `dense_image_shape`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .._registry import ModelConfig, check_positive_ints, register_model
from ..modes import MODES

# head -> the harness task its detector trains on
HEAD_TASKS: dict[str, str] = {"faster_rcnn": "detect", "mask_rcnn": "segment"}
HEADS = tuple(HEAD_TASKS)

# backbone model -> (family, size) of the detector built on it
BACKBONES: dict[str, tuple[str, str]] = {
    **{f"revbifpn_s{i}": ("RevBiFPN", f"S{i}") for i in range(7)},
    **{f"hrnet_w{w}": ("HRNetV2p", f"W{w}") for w in (18, 32, 48)},
    "resnet50": ("ResNet-FPN", "R50"),
    "resnet101": ("ResNet-FPN", "R101"),
}


def model_name(head: str, backbone: str) -> str:
    """'faster_rcnn_revbifpn_s3', 'mask_rcnn_hrnetv2p_w18', 'faster_rcnn_r50_fpn'."""
    if backbone.startswith("hrnet"):
        short = backbone.replace("hrnet", "hrnetv2p")
    elif backbone.startswith("resnet"):
        short = f"r{backbone[len('resnet') :]}_fpn"
    else:
        short = backbone
    return f"{head}_{short}"

COCO_IMAGE = (800, 1333)  # MMDetection's (height, width) for 2x-scale COCO training
DATA_SIZES = ("max", "drawn")


def dense_image_shape(resolution: int) -> tuple[int, int]:
    """(height, width) of a detection image whose short side is `resolution` (the
    `detect` and `segment` tasks' images, and so the detectors')."""
    return resolution, round(resolution * COCO_IMAGE[1] / COCO_IMAGE[0])


# ------------------------------------------------------------------------------ configs


@dataclass(frozen=True, kw_only=True)
class DetectorConfig(ModelConfig):
    """A two-stage detector: backbone, head, and torchvision's training sample sizes."""

    img_size: int = 800  # the image height (short side); the width follows 1333:800
    num_classes: int = 91  # torchvision's COCO label space (80 used, background 0)
    backbone: str = "resnet50"
    head: str = "faster_rcnn"
    rpn_post_nms_top_n_train: int = 2000  # proposals kept per image after NMS
    box_batch_size_per_image: int = 512  # RoIs sampled per image for the box head
    # The data-dependent sizes of a training step: "max", at their configured maxima (the
    # RPN's proposals after NMS, the sampler's positive RoIs), or "drawn", what the targets
    # and the network give (`Detector`, "Sizes at their maxima").
    data_sizes: str = "max"

    @property
    def resolution_multiple(self) -> int:
        return 32  # the coarsest map's stride: the RevBiFPN and HRNet trunks need it

    @property
    def min_resolution(self) -> int:
        return 64

    @property
    def task(self) -> str:
        return HEAD_TASKS[self.head]

    def validate(self) -> None:
        check_positive_ints(self, "rpn_post_nms_top_n_train", "box_batch_size_per_image")
        if self.data_sizes not in DATA_SIZES:
            raise ValueError(
                f"data_sizes {self.data_sizes!r} is invalid; valid: {', '.join(DATA_SIZES)}"
            )
        if self.head not in HEADS:
            raise ValueError(f"head {self.head!r} is invalid; valid: {', '.join(HEADS)}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes {self.num_classes} is invalid: it needs 2 or more")


@dataclass(frozen=True, kw_only=True)
class RevDetectorConfig(DetectorConfig):
    """A detector on a RevBiFPN backbone: every engine mode, on the same weights."""

    mode: str = "reversible"
    backbone: str = "revbifpn_s0"

    modes: ClassVar[tuple[str, ...]] = MODES


# ---------------------------------------------------------------------------- registration

for _head in HEADS:
    for _backbone, (_family, _size) in BACKBONES.items():
        _rev = _backbone.startswith("revbifpn")
        _config = (RevDetectorConfig if _rev else DetectorConfig)(backbone=_backbone, head=_head)
        register_model(
            model_name(_head, _backbone),
            _config,
            family=_family,
            size=_size,
            builder="revbench.models.detection:Detector",
        )
