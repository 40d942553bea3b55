"""BiFPN's config and registration (the network: models/bifpn.py)."""

from __future__ import annotations

from dataclasses import dataclass

from .._registry import ModelConfig, check_positive_ints, register_model

LEVELS = 5  # P3..P7


@dataclass(frozen=True, kw_only=True)
class BiFPNConfig(ModelConfig):
    img_size: int = 256
    width: int = 64  # EfficientDet-D0's BiFPN width
    num_layers: int = 3  # D0's depth

    @property
    def resolution_multiple(self) -> int:
        return 2 ** (LEVELS + 2)  # P7's stride

    def validate(self) -> None:
        check_positive_ints(self, "width", "num_layers")


register_model(
    "bifpn", BiFPNConfig(), family="BiFPN", size="neck", builder="revbench.models.bifpn:BiFPNNet"
)
