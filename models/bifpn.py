"""BiFPN (Tan et al., EfficientDet, CVPR 2020): the bidirectional pyramid RevSilo makes reversible.

A neck of its own, so memory can be compared layer for layer with RevBiFPN's reversible
stack (suite `neck-scaling`): BiFPN stores every layer's activations for the backward pass,
so its training memory grows with `num_layers`; the reversible stack's does not.

One BiFPN layer on levels P3..P7 (stride 8..128, all `width` channels):

    top-down   P_k^td  = conv(fuse(P_k, up(P_{k+1}^td)))            k = 6..3, P_7^td = P_7
    bottom-up  P_k^out = conv(fuse(P_k, P_k^td, down(P_{k-1}^out)))   k = 4..6
               P_7^out = conv(fuse(P_7, down(P_6^out))),  P_3^out = P_3^td

    fuse(x_1..x_n) = sum_i w_i x_i / (sum_i w_i + 1e-4),  w_i = relu(weight_i), init 1
    conv = depthwise 3x3 -> pointwise 1x1 -> BatchNorm -> SiLU
    up = nearest x2, down = 3x3 max-pool, stride 2

Inputs as in EfficientDet: P3-P5 from C3-C5 by 1x1 convs, P6 a 3x3 stride-2 conv on C5,
P7 one on P6. `BiFPNNet` puts a small convolutional stem before the neck (C3-C5) and a
pooled linear head after it, so it trains as a classifier through revbench's estimator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configs.bifpn import LEVELS, BiFPNConfig

STEM_WIDTHS = (32, 48, 64, 128, 256)  # strides 2..32; the last three are C3, C4, C5
EPS = 1e-4


def _conv_bn_act(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.SiLU()
    )


class SeparableConv(nn.Sequential):
    """Depthwise 3x3, pointwise 1x1, BatchNorm, SiLU."""

    def __init__(self, width: int):
        super().__init__(
            nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False),
            nn.Conv2d(width, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.SiLU(),
        )


class FusionNode(nn.Module):
    """fuse(x_1..x_n) with fast normalised weights, then a separable conv."""

    def __init__(self, width: int, num_inputs: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_inputs))
        self.conv = SeparableConv(width)

    def forward(self, inputs: list[Tensor]) -> Tensor:
        w = F.relu(self.weight)
        w = w / (w.sum() + EPS)
        return self.conv(sum(w[i] * x for i, x in enumerate(inputs)))


class BiFPNLayer(nn.Module):
    """One top-down then bottom-up pass over P3..P7 (see the module docstring)."""

    def __init__(self, width: int):
        super().__init__()
        self.top_down = nn.ModuleList(FusionNode(width, 2) for _ in range(LEVELS - 1))  # P6..P3
        # P4..P6 fuse three inputs, P7 two
        self.bottom_up = nn.ModuleList(
            FusionNode(width, 3 if k < LEVELS - 1 else 2) for k in range(1, LEVELS)
        )

    def forward(self, p: list[Tensor]) -> list[Tensor]:
        td = [None] * LEVELS
        td[-1] = p[-1]
        for i, k in enumerate(range(LEVELS - 2, -1, -1)):  # P6 .. P3
            up = F.interpolate(td[k + 1], size=p[k].shape[-2:], mode="nearest")
            td[k] = self.top_down[i]([p[k], up])
        out = [td[0]]
        for i, k in enumerate(range(1, LEVELS)):  # P4 .. P7
            down = F.max_pool2d(out[-1], 3, 2, 1)
            inputs = [p[k], td[k], down] if k < LEVELS - 1 else [p[k], down]
            out.append(self.bottom_up[i](inputs))
        return out


class BiFPN(nn.Module):
    """C3-C5 to P3-P7, then `num_layers` BiFPN layers."""

    def __init__(self, in_channels: tuple[int, int, int], width: int, num_layers: int):
        super().__init__()
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, width, 1, bias=False), nn.BatchNorm2d(width))
            for c in in_channels
        )
        self.p6 = nn.Conv2d(in_channels[-1], width, 3, 2, 1)
        self.p7 = nn.Conv2d(width, width, 3, 2, 1)
        self.layers = nn.Sequential(*(BiFPNLayer(width) for _ in range(num_layers)))

    def forward(self, c: list[Tensor]) -> list[Tensor]:
        p6 = self.p6(c[-1])
        p = [lat(x) for lat, x in zip(self.lateral, c)] + [p6, self.p7(p6)]
        return self.layers(p)


class BiFPNNet(nn.Module):
    """A small stem (C3-C5), the BiFPN neck, and a pooled linear classifier."""

    def __init__(self, cfg: BiFPNConfig):
        super().__init__()
        self.num_classes = cfg.num_classes
        widths = (3, *STEM_WIDTHS)
        self.stem = nn.ModuleList(_conv_bn_act(a, b, 2) for a, b in zip(widths, widths[1:]))
        self.neck = BiFPN(STEM_WIDTHS[-3:], cfg.width, cfg.num_layers)
        self.head = nn.Linear(cfg.width, cfg.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        feats = []
        for stage in self.stem:
            x = stage(x)
            feats.append(x)
        levels = self.neck(feats[-3:])  # P3..P7, each (B, width, H/2^k, W/2^k)
        pooled = torch.stack([p.mean((2, 3)) for p in levels]).mean(0)  # (B, width)
        return self.head(pooled)  # (B, num_classes)
