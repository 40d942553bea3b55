"""The detectors' names, backbones and tasks, without torch: the published detector figures
are keyed by backbone and head (`hrnet_w18`, `faster_rcnn`), and the report maps them to
revbench's detector names (`faster_rcnn_hrnetv2p_w18`) from this table, not the registry."""

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
