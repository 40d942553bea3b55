"""RevBiFPN S0-S6's config, published sizes and registration (the network:
models/revbifpn.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from .._registry import ReversibleConfig, check_positive_ints, check_rate, register_family

STEM_BLOCK = 4  # space-to-depth block size: scale 0 has stride 4


def _scaled(widths: Sequence[int], width: float) -> tuple[int, ...]:
    # The paper's width rule: int(w * c) rounded down to a multiple of 16.
    return tuple(int(width * c) // 16 * 16 for c in widths)


@dataclass(frozen=True, kw_only=True)
class RevBiFPNConfig(ReversibleConfig):
    """One RevBiFPN. Per-scale tuples have one entry per scale (4 in the paper)."""

    channels: tuple[int, ...] = (48, 64, 80, 160)
    head_channels: tuple[int, ...] = (48, 64, 128, 320)
    fc_features: int = 1280
    num_ext_layers: int = 2  # E: extension stages after the 3 growth stages
    blocks_per_stage: int = 2  # per-scale residual blocks before each RevSilo
    dw_kernels: tuple[int, ...] = (3, 5, 5, 3)  # dwk
    dw_kernel_pads: tuple[int, ...] = (0, 0, 0, 2)  # dwkp
    expand_ratios: tuple[float, ...] = (1, 1, 2, 2)
    se_ratios: tuple[float, ...] = (0.25, 0.25, 0.125, 0.0)  # 0: no squeeze-excite
    neck_kernel: int = 5  # neck and head MBConvs
    neck_expand_ratios: tuple[float, ...] = (1, 2, 2, 2)
    neck_se_ratios: tuple[float, ...] = (0.25, 0.25, 0.125, 0.125)
    drop_rate: float = 0.25  # head dropout
    drop_path_rate: float = 0.0  # reached in the last stage
    features_only: bool | str = False  # True: neck maps; "stack": raw stack outputs
    # False: autograd keeps the neck's activations instead of recomputing them in backward
    # (the official code's disable_recomp=True), as the published memory figures may have
    # been measured (docs/published-figures.md). No effect in vanilla mode.
    recompute_neck: bool = True

    memory_only: ClassVar[tuple[str, ...]] = (*ReversibleConfig.memory_only, "recompute_neck")

    @property
    def resolution_multiple(self) -> int:
        return STEM_BLOCK * 2 ** (len(self.channels) - 1)  # the coarsest scale's stride

    @property
    def in_chans(self) -> int:  # channels the image is repeated to before the stem
        return self.channels[0] // STEM_BLOCK**2

    @property
    def task(self) -> str:
        return "features" if self.features_only else "classify"

    def validate(self) -> None:
        for name in ("channels", "head_channels", "dw_kernels", "dw_kernel_pads"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        for name in ("expand_ratios", "se_ratios", "neck_expand_ratios", "neck_se_ratios"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        n = len(self.channels)
        for name in (
            "head_channels",
            "dw_kernels",
            "dw_kernel_pads",
            "expand_ratios",
            "se_ratios",
            "neck_expand_ratios",
            "neck_se_ratios",
        ):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"{name}={getattr(self, name)} is invalid: it needs one entry per scale "
                    f"({n}, as channels={self.channels})"
                )
        if n < 2:
            raise ValueError(f"channels={self.channels} is invalid: a pyramid needs 2+ scales")
        if self.channels[0] % (STEM_BLOCK**2) or min(self.channels) < 2:
            raise ValueError(
                f"channels={self.channels} is invalid: channels[0] must be a multiple of "
                f"{STEM_BLOCK**2} (space-to-depth stem) and every width at least 2"
            )
        check_positive_ints(self, "fc_features", "neck_kernel")
        if self.num_ext_layers < 0 or self.blocks_per_stage < 0:
            raise ValueError(
                f"num_ext_layers={self.num_ext_layers}, blocks_per_stage={self.blocks_per_stage}"
                " are invalid: both must be >= 0"
            )
        check_rate(self.drop_rate, "drop_rate")
        check_rate(self.drop_path_rate, "drop_path_rate")
        if not isinstance(self.recompute_neck, bool):
            raise ValueError(
                f"recompute_neck={self.recompute_neck!r} is invalid; valid: True, False"
            )
        if not (isinstance(self.features_only, bool) or self.features_only == "stack"):
            raise ValueError(
                f"features_only={self.features_only!r} is invalid; valid: False, True, 'stack'"
            )


# -------------------------------------------------------------------------- registration

PUBLISHED_URL = "https://cerebras-public.s3.us-west-2.amazonaws.com/revbifpn/{name}.pth.tar"


def _scaled_config(
    width: float, num_ext_layers: int, drop_rate: float, drop_path_rate: float, img_size: int
) -> RevBiFPNConfig:
    base = RevBiFPNConfig()
    return RevBiFPNConfig(
        channels=_scaled(base.channels, width),
        head_channels=_scaled(base.head_channels, width),
        fc_features=_scaled((base.fc_features,), width)[0],
        num_ext_layers=num_ext_layers,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
        img_size=img_size,
    )


# name: (size, config from width multiplier, E (extension stages), head dropout, max drop
# path, native resolution)
VARIANTS: dict[str, tuple[str, RevBiFPNConfig]] = {
    "revbifpn_s0": ("S0", _scaled_config(1, 2, 0.25, 0.0, 224)),
    "revbifpn_s1": ("S1", _scaled_config(4 / 3, 2, 0.25, 0.0, 256)),
    "revbifpn_s2": ("S2", _scaled_config(2, 2, 0.3, 0.0, 256)),
    "revbifpn_s3": ("S3", _scaled_config(8 / 3, 3, 0.3, 0.05, 288)),
    "revbifpn_s4": ("S4", _scaled_config(4, 4, 0.4, 0.1, 320)),
    "revbifpn_s5": ("S5", _scaled_config(16 / 3, 4, 0.4, 0.1, 352)),
    "revbifpn_s6": ("S6", _scaled_config(20 / 3, 5, 0.6, 0.3, 352)),
}

register_family(
    "RevBiFPN",
    VARIANTS,
    "revbench.models.revbifpn:RevBiFPN",
    pretrained_urls={name: PUBLISHED_URL.format(name=name) for name in VARIANTS},
)
