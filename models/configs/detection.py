"""The detectors' configs and registration, without torch (the networks:
models/detection.py; their names, backbones and image shape: models/detection_names.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .._registry import ModelConfig, check_positive_ints, register_model
from ..detection_names import BACKBONES, HEAD_TASKS, HEADS, model_name
from ..modes import MODES

DATA_SIZES = ("max", "drawn")

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
