"""The detectors' names, backbones, tasks and image shape, without torch or the registry:
the published detector figures are keyed by backbone and head (`hrnet_w18`,
`faster_rcnn`), and the report maps them to revbench's detector names
(`faster_rcnn_hrnetv2p_w18`) from this table, not the registry; the dense tasks size their
images with `dense_image_shape`."""

from __future__ import annotations

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


def dense_image_shape(resolution: int) -> tuple[int, int]:
    """(height, width) of a detection image whose short side is `resolution` (the
    `detect` and `segment` tasks' images, and so the detectors')."""
    return resolution, round(resolution * COCO_IMAGE[1] / COCO_IMAGE[0])
