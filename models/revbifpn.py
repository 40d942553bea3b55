"""RevBiFPN: the fully reversible bidirectional feature pyramid network.

Chiley, Thangarasa, Gupta, Samar, Hestness, DeCoste. "RevBiFPN: The Fully Reversible
Bidirectional Feature Pyramid Network", MLSys 2023 (arXiv 2206.14098).

The whole backbone is ONE reversible stack over a growing tuple of scales; scale k has
stride 4 * 2^k and C_k channels.

* Stem (no parameters): the RGB image is repeated to C_0 / 16 channels (floor(C_0/48)
  full copies, then its first (C_0/16) mod 3 channels) and space-to-depth with block 4
  turns that into C_0 channels at stride 4. Only the repetition sits outside the stack.
* Per-scale reversible residual block on every scale (RevNet coupling, channels split
  as x0 = first C - C//2, x1 = the rest):

      y1 = x1 + F(x0)        x0 = y0 - G(y1)
      y0 = x0 + G(y1)        x1 = y1 - F(x0)

* RevSilo over scales 0 (finest) .. N-1, additive coupling in two sweeps. Down sweep,
  every branch reading the original inputs (a new scale has no residual term):

      z_j = x_j + sum_{i<j} F_ij(x_i)

  then up sweep, every branch reading the z's; the coarsest scale passes through:

      y_j = z_j + sum_{i>j} G_ij(z_i)

  Inverse: undo the up sweep coarsest source first (z_{N-1} = y_{N-1} is known, and
  z_i is exact once every coarser source has been subtracted), then the down sweep
  finest source first (x_0 = z_0). A scale the silo added is discarded on inverse.
  F_ij is a stride-2^(j-i) MBConv, G_ij an MBConv followed by bilinear upsampling.
* 3 growth stages (2 per-scale blocks on every existing scale, then a RevSilo that adds
  a coarser scale) and E extension stages (2 blocks on all 4 scales, a RevSilo adding
  none). Drop path in stage k is max_drop * k / (3 + E), except on branches that create
  a new scale.
* Neck (one MBConv per scale to the head widths), gradient-checkpointed in reversible
  mode: it stores only the stack's outputs, which the stack keeps anyway. The override
  `recompute_neck=False` keeps its activations instead (the official code's
  `disable_recomp=True`): same outputs and gradients, more memory per sample. Head (ordinary
  autograd): from the finest neck map, a stride-2 MBConv per level plus the next coarser
  map, a 1x1 conv to the fc width, mean pool, dropout, Linear.

Modes (same weights, `model.set_mode(...)`): reversible (the engine of
models/reversible.py; neck checkpointed), vanilla (plain autograd everywhere) and
checkpoint (torch.utils.checkpoint per block, neck checkpointed). BatchNorm running
statistics move once per step in every mode (the official code moves them twice).

Numerics. Reversible gradients equal autograd's to 1e-10 in float64. In fp32 the rebuilt
inputs carry the rounding of every inversion above them: for S0 at init the stack input
comes back 1.2e-5 off (relative), and the first blocks' gradients 1e-4. Under autocast a
scale that a RevSilo creates is cast to the stream dtype (fp32), where the official code
leaves it in half precision: a half-precision stream would make each later inversion on
that scale lose ~3 significant digits.

Backbone use (detection, segmentation). `create("revbifpn_s3", features_only=True)`
returns the four neck maps as a list, strides 4, 8, 16, 32 with the head widths;
`features_only="stack"` returns the four raw stack outputs (the backbone widths) and
builds no neck. Either way no classification head is built, and `model.feature_info`
lists `{"num_chs", "reduction", "module"}` per map as timm does, e.g. for an
MMDetection-style neck:

    backbone = create("revbifpn_s3", features_only=True, img_size=800 // 32 * 32)
    in_channels = [f["num_chs"] for f in backbone.feature_info]  # FPN / RPN in_channels
    c2, c3, c4, c5 = backbone(images)  # images: (B, 3, H, W), H and W multiples of 32

Pretrained weights: `pretrained=True` downloads the published checkpoint into
`$REVBENCH_CACHE` (default ~/.cache/revbench), `pretrained="path or URL"` loads that
file (models/hub.py). A file named like a published checkpoint (revbifpn_s{0..6}.pth.tar)
must carry the published SHA-256, checked before loading; a downloaded file that fails the
check is deleted. Files under other names are the user's own and load unchecked, as does
any file with `check_hash=False`. Loading is strict; a backbone-only model skips the
published head (and neck) keys.

Counts: parameters and MACs (published thop convention, see revbench/counting.py) of
all seven sizes match the official implementation exactly, as does the state_dict
layout of the released checkpoints. Published figures: revbench/data/published.csv.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from . import hub
from ._layers import drop_path_layer
from ._registry import check_side
from .configs.revbifpn import PUBLISHED_URL, STEM_BLOCK, VARIANTS, RevBiFPNConfig  # noqa: F401 (the family's sizes, named here too)
from .reversible import (
    ReversibleBlock,
    ReversibleModel,
    ReversibleStack,
    TwoStreamBlock,
    checkpointed,
)

Tensors = tuple[Tensor, ...]

BN_EPS = 1e-3
BN_MOMENTUM = 0.1


# --------------------------------------------------------------------------- layers


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class ConvNormAct(nn.Module):
    """Conv (no bias: BN follows) -> BN -> optional Hardswish."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
    ):
        super().__init__()
        padding = (kernel_size - 1) // 2
        self.conv = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride, padding, groups=groups, bias=False
        )
        self.norm = _bn(out_chs)
        self.act = nn.Hardswish() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


class GlobalAvgPool(nn.Module):
    """Mean over H and W: (B, C, H, W) -> (B, C, 1, 1), or (B, C) with flatten."""

    def __init__(self, flatten: bool = False):
        super().__init__()
        self.flatten = flatten

    def forward(self, x: Tensor) -> Tensor:
        return x.mean((2, 3), keepdim=not self.flatten)


class SqueezeExcite(nn.Module):
    """x * hardsigmoid(W2 hardswish(W1 mean(x) + b1) + b2); `se.1` and `se.3` hold W1, W2."""

    def __init__(self, channels: int, se_chs: int):
        super().__init__()
        self.se = nn.Sequential(
            GlobalAvgPool(),
            nn.Conv2d(channels, se_chs, 1),
            nn.Hardswish(),
            nn.Conv2d(se_chs, channels, 1),
            nn.Hardsigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.se(x)


class MBConv(nn.Module):
    """Inverted bottleneck without skip: [expand 1x1] -> depthwise -> [SE] -> project 1x1.

    The expansion exists only for expand_ratio != 1 and the SE only for 0 < se_ratio <= 1;
    the SE width is max(1, int(in_chs * se_ratio)) (of the input, not the expanded width).
    Drop path (whole sample, rescaled by 1/keep) acts on the output, so a residual
    function that owns it is replayed as a whole.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int = 1,
        expand_ratio: float = 1,
        se_ratio: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        mid = int(in_chs * expand_ratio)
        self.exp_conv = ConvNormAct(in_chs, mid) if expand_ratio != 1 else None
        self.dw_conv = ConvNormAct(mid, mid, kernel_size, stride, groups=mid)
        self.se = SqueezeExcite(mid, max(1, int(in_chs * se_ratio))) if 0 < se_ratio <= 1 else None
        self.project_conv = ConvNormAct(mid, out_chs, act=False)
        self.drop_path = drop_path_layer(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        if self.exp_conv is not None:
            x = self.exp_conv(x)
        x = self.dw_conv(x)
        if self.se is not None:
            x = self.se(x)
        return self.drop_path(self.project_conv(x))


# --------------------------------------------------------------------- reversible blocks


class SpaceToDepth(ReversibleBlock):
    """(B, C, H, W) -> (B, b*b*C, H/b, W/b), a permutation: exactly invertible.

    Output channel (r * b + s) * C + c holds pixel (b*h + r, b*w + s) of input channel c,
    the order of the released checkpoints (not that of F.pixel_unshuffle).
    """

    def __init__(self, block: int = STEM_BLOCK):
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensors:
        b = self.block
        B, C, H, W = x.shape
        x = x.reshape(B, C, H // b, b, W // b, b).permute(0, 3, 5, 1, 2, 4)  # (B, b, b, C, h, w)
        return (x.reshape(B, b * b * C, H // b, W // b),)

    @torch.no_grad()
    def inverse(self, y: Tensor) -> Tensors:
        return (self._unshuffle(y),)

    def _unshuffle(self, y: Tensor) -> Tensor:
        b = self.block
        B, C, h, w = y.shape
        y = y.reshape(B, b, b, C // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)  # (B, C, h, b, w, b)
        return y.reshape(B, C // (b * b), h * b, w * b)

    @torch.no_grad()
    def backward_pass(self, ys: Tensors, dys: Tensors) -> tuple[Tensors, Tensors]:
        # A permutation: its inverse rebuilds the input and routes the gradient alike.
        return (self._unshuffle(ys[0]),), (self._unshuffle(dys[0]),)


class RevResidual(TwoStreamBlock):
    """Per-scale reversible residual block on one stream, split along channels:

        x0, x1 = x[:, :C - C//2], x[:, C - C//2:]
        y1 = x1 + F(x0);  y0 = x0 + G(y1);  y = cat(y0, y1)

    This is TwoStreamBlock's coupling with (X1, X2) = (x1, x0), whose fused backward
    pass (one recompute of G, then one of F) it reuses. F and G live at `f.xform_0_1` and
    `g.xform_0_1`, the released checkpoints' names.
    """

    def __init__(self, F: nn.Module, G: nn.Module, split: int):
        super().__init__()
        self.f = nn.ModuleDict({"xform_0_1": F})
        self.g = nn.ModuleDict({"xform_0_1": G})
        self.split = split  # channels of x0

    @property
    def F(self) -> nn.Module:  # type: ignore[override]
        return self.f["xform_0_1"]

    @property
    def G(self) -> nn.Module:  # type: ignore[override]
        return self.g["xform_0_1"]

    def _halves(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return t[:, : self.split], t[:, self.split :]

    def forward(self, x: Tensor) -> Tensors:  # type: ignore[override]
        x0, x1 = self._halves(x)
        y1, y0 = super().forward(x1, x0)
        return (torch.cat((y0, y1), dim=1),)

    @torch.no_grad()
    def inverse(self, y: Tensor) -> Tensors:  # type: ignore[override]
        y0, y1 = self._halves(y)
        x1, x0 = super().inverse(y1, y0)
        return (torch.cat((x0, x1), dim=1),)

    def backward_pass(self, ys: Tensors, dys: Tensors) -> tuple[Tensors, Tensors]:
        y0, y1 = self._halves(ys[0])
        dy0, dy1 = self._halves(dys[0])
        (x1, x0), (dx1, dx0) = super().backward_pass((y1, y0), (dy1, dy0))
        with torch.no_grad():
            return (torch.cat((x0, x1), dim=1),), (torch.cat((dx0, dx1), dim=1),)


class ScaleBlocks(ReversibleBlock):
    """One RevResidual per scale, `rev_transform_{k}` on stream k; streams stay apart."""

    def __init__(self, blocks: Sequence[RevResidual]):
        super().__init__()
        for k, block in enumerate(blocks):
            self.add_module(f"rev_transform_{k}", block)

    def _blocks(self) -> list[RevResidual]:
        return list(self.children())  # type: ignore[return-value]

    def forward(self, *xs: Tensor) -> Tensors:
        return tuple(block(x)[0] for block, x in zip(self._blocks(), xs, strict=True))

    @torch.no_grad()
    def inverse(self, *ys: Tensor) -> Tensors:
        return tuple(block.inverse(y)[0] for block, y in zip(self._blocks(), ys, strict=True))

    def backward_pass(self, ys: Tensors, dys: Tensors) -> tuple[Tensors, Tensors]:
        xs, dxs = [], []
        for block, y, dy in zip(self._blocks(), ys, dys, strict=True):
            (x,), (dx,) = block.backward_pass((y,), (dy,))
            xs.append(x)
            dxs.append(dx)
        return tuple(xs), tuple(dxs)


class RevSilo(ReversibleBlock):
    """Reversible bidirectional multi-scale fusion (see the module docstring).

    Takes n_in scales and returns n_out = n_in (+1 when it adds a coarser scale).
    Down branch F_ij (i < j) is `f.xform_{i}_{j}`; up branch G_ij (source i > target j)
    is `g.xform_{n_out-1-i}_{n_out-1-j}` (the released checkpoints index the up sweep
    from the coarsest scale), an nn.Sequential(MBConv, Upsample).
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        down: dict[tuple[int, int], nn.Module],
        up: dict[tuple[int, int], nn.Module],
    ):
        super().__init__()
        if n_out not in (n_in, n_in + 1):
            raise ValueError(f"a RevSilo maps n scales to n or n+1, not {n_in} to {n_out}")
        self.n_in, self.n_out = n_in, n_out
        last = n_out - 1
        self.f = nn.ModuleDict({f"xform_{i}_{j}": down[i, j] for i, j in sorted(down)})
        self.g = nn.ModuleDict(
            {
                f"xform_{last - i}_{last - j}": up[i, j]
                for i, j in sorted(up, key=lambda s: (-s[0], -s[1]))
            }
        )

    def F(self, i: int, j: int) -> nn.Module:
        return self.f[f"xform_{i}_{j}"]

    def G(self, i: int, j: int) -> nn.Module:
        last = self.n_out - 1
        return self.g[f"xform_{last - i}_{last - j}"]

    def forward(self, *xs: Tensor) -> Tensors:
        n, m = self.n_in, self.n_out
        # Down sweep: z_j = x_j + sum_{i<j} F_ij(x_i); a new scale starts from its first
        # term, cast to the stream dtype: under autocast the branches return bf16/fp16, and
        # a half-precision stream would make every later subtraction in the inverse lossy.
        z: list[Tensor | None] = [*xs, *([None] * (m - n))]
        for i in range(n):
            for j in range(i + 1, m):
                f = self.record(f"F{i}_{j}", self.F(i, j), xs[i])
                z[j] = f.to(xs[i].dtype) if z[j] is None else z[j] + f
        # Up sweep: y_j = z_j + sum_{i>j} G_ij(z_i), coarsest source first.
        y = list(z)
        for i in range(m - 1, 0, -1):
            for j in range(i - 1, -1, -1):
                y[j] = y[j] + self.record(f"G{i}_{j}", self.G(i, j), z[i])
        return tuple(y)  # type: ignore[arg-type]

    @torch.no_grad()
    def inverse(self, *ys: Tensor) -> Tensors:
        n, m = self.n_in, self.n_out
        z = list(ys)
        for i in range(m - 1, 0, -1):  # z_i is exact once every coarser source is removed
            for j in range(i):
                z[j] = z[j] - self.G(i, j)(z[i])
        x = z[:n]  # a scale this silo added carries no input: discard it
        for i in range(n):  # x_i is exact once every finer source is removed
            for j in range(i + 1, n):
                x[j] = x[j] - self.F(i, j)(x[i])
        return tuple(x)

    def backward_pass(self, ys: Tensors, dys: Tensors) -> tuple[Tensors, Tensors]:
        """Rebuild the inputs and their gradients; one recompute per branch.

        Up sweep first: with z_i rebuilt, each G_ij(z_i) is recomputed once, backpropagated
        with dy_j (accumulating into z_i.grad and the parameters) and subtracted from y_j.
        dz_i = dy_i + sum_{j<i} (dG_ij/dz_i)^T dy_j. The down sweep is undone the same way
        finest source first, with dx_i = dz_i + sum_{j>i} (dF_ij/dx_i)^T dz_j.
        """
        n, m = self.n_in, self.n_out
        z, dz = list(ys), list(dys)
        for i in range(m - 1, 0, -1):
            z[i], dz[i] = self._backprop_source(f"G{i}_", self.G, i, range(i), z, dz, dz[i])
        x, dx = z[:n], dz[:n]
        for i in range(n):
            x[i], dx[i] = self._backprop_source(f"F{i}_", self.F, i, range(i + 1, m), x, dz, dz[i])
        return tuple(x), tuple(dx)

    def _backprop_source(
        self,
        key: str,
        branch: Callable[[int, int], nn.Module],
        i: int,
        targets: range,
        outs: list[Tensor],
        douts: list[Tensor],
        dsource: Tensor,
    ) -> tuple[Tensor, Tensor]:
        # Source i's value is exact here; every branch leaving it is recomputed, backpropagated
        # with its target's gradient, and removed from that target (in `outs`, if it is one).
        with torch.enable_grad():
            src = outs[i].detach().requires_grad_()
            for j in targets:
                out = self.replay(f"{key}{j}", branch(i, j), src)
                out.backward(douts[j])
                if j < len(outs):
                    with torch.no_grad():
                        outs[j] = outs[j] - out
                del out  # frees this branch's recomputed graph before the next one
        grad = dsource if src.grad is None else dsource + src.grad
        return src.detach(), grad


class Neck(nn.Module):
    """One MBConv per scale to the head widths (`recomp_transform_{k}`).

    In reversible mode each is gradient-checkpointed: it then saves only its input, the
    stack output that the reversible engine keeps anyway. BatchNorm statistics are frozen
    in the recompute so they move once per step.
    """

    def __init__(self, transforms: Sequence[nn.Module]):
        super().__init__()
        for k, t in enumerate(transforms):
            self.add_module(f"recomp_transform_{k}", t)

    def forward(self, xs: Sequence[Tensor], checkpoint: bool = False) -> list[Tensor]:
        outs = []
        for t, x in zip(self.children(), xs, strict=True):
            outs.append(checkpointed(t, x) if checkpoint and torch.is_grad_enabled() else t(x))
        return outs


class BackboneStack(ReversibleStack):
    """The reversible stack, plus the neck registered as `recomp_op` beside its blocks.

    The released checkpoints keep the neck under `rev_stack.recomp_op`; it is not a block
    of the stack, so iteration skips it.
    """

    def __init__(self, blocks: Sequence[ReversibleBlock], neck: Neck | None, mode: str):
        super().__init__(blocks, mode=mode)
        if neck is not None:
            self.recomp_op = neck

    def _blocks(self) -> list[ReversibleBlock]:
        return [m for name, m in self._modules.items() if name != "recomp_op"]  # type: ignore[misc]

    def __len__(self) -> int:
        return len(self._blocks())

    def __iter__(self) -> Iterator[ReversibleBlock]:
        return iter(self._blocks())

    def __getitem__(self, i: int) -> ReversibleBlock:
        return self._blocks()[i]


class ClassHead(nn.Module):
    """Fuse the pyramid fine to coarse, then 1x1 conv -> mean -> dropout -> Linear.

    out = p_0; for h = 0, 1, 2: out = p_{h+1} + MBConv_h(out) (stride 2).
    """

    def __init__(
        self,
        channels: Sequence[int],
        kernel_size: int,
        expand_ratios: Sequence[float],
        se_ratios: Sequence[float],
        fc_features: int,
        drop_rate: float,
        num_classes: int,
    ):
        super().__init__()
        self.pyramid_heads = nn.ModuleList(
            MBConv(channels[h], channels[h + 1], kernel_size, 2, expand_ratios[h], se_ratios[h])
            for h in range(len(channels) - 1)
        )
        self.final_conv = ConvNormAct(channels[-1], fc_features)
        self.pool = GlobalAvgPool(flatten=True)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(fc_features, num_classes)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        out = feats[0]  # (B, C_0, H/4, W/4)
        for h, head in enumerate(self.pyramid_heads):
            out = feats[h + 1] + head(out)
        out = self.pool(self.final_conv(out))  # (B, fc_features)
        return self.fc(self.dropout(out))


# --------------------------------------------------------------------------------- model


class RevBiFPN(ReversibleModel):
    """RevBiFPN backbone + neck + classification head; `features_only` drops the head."""

    def __init__(self, cfg: RevBiFPNConfig):
        super().__init__()
        self.cfg = cfg
        self.features_only = cfg.features_only
        # timm's convention: a backbone without a classifier has num_classes 0.
        self.num_classes = 0 if cfg.features_only else cfg.num_classes
        neck = None if cfg.features_only == "stack" else _make_neck(cfg)
        self.rev_stack = BackboneStack(_make_blocks(cfg), neck, cfg.mode)
        self.head = None
        if cfg.features_only is False:
            self.head = ClassHead(
                cfg.head_channels,
                cfg.neck_kernel,
                cfg.neck_expand_ratios,
                cfg.neck_se_ratios,
                cfg.fc_features,
                cfg.drop_rate,
                cfg.num_classes,
            )
        widths, where = (
            (cfg.channels, "rev_stack")
            if cfg.features_only == "stack"
            else (cfg.head_channels, "rev_stack.recomp_op.recomp_transform_{}")
        )
        self.feature_info = [
            {"num_chs": c, "reduction": STEM_BLOCK * 2**k, "module": where.format(k)}
            for k, c in enumerate(widths)
        ]
        _init_weights(self)

    def _repeat_channels(self, x: Tensor) -> Tensor:
        # (B, 3, H, W) -> (B, C_0/16, H, W): whole copies, then the first channels again.
        n = self.cfg.in_chans
        return torch.cat([x] * (n // 3) + [x[:, : n % 3]], dim=1)

    def check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"input of shape {tuple(x.shape)} is invalid: RevBiFPN takes (B, 3, H, W)"
            )
        m = self.cfg.resolution_multiple
        for side, what in zip(x.shape[2:], ("input height", "input width")):
            check_side(int(side), m, m, what)

    def forward_stack(self, x: Tensor) -> list[Tensor]:
        """The reversible backbone's outputs, fine to coarse: (B, C_k, H/4/2^k, W/4/2^k)."""
        self.check_input(x)
        return list(self.rev_stack(self._repeat_channels(x)))

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """The pyramid a detector consumes: neck maps, or stack outputs for "stack"."""
        feats = self.forward_stack(x)
        if self.features_only == "stack":
            return feats
        recompute = self.mode != "vanilla" and self.cfg.recompute_neck
        return self.rev_stack.recomp_op(feats, checkpoint=recompute)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        feats = self.forward_features(x)  # 4 x (B, C_k, H_k, W_k)
        if self.head is None:
            return feats
        return self.head(feats)  # (B, num_classes)

    def load_pretrained(self, source: str | os.PathLike, check_hash: bool = True) -> None:
        """Load a released state_dict (flat, or in a training container) strictly; a
        backbone skips head (and neck). `check_hash=False` loads your own file under a
        published name."""
        skip = [] if self.head is not None else ["head."]
        if self.features_only == "stack":
            skip.append("rev_stack.recomp_op.")
        state = hub.load_state_dict(source, PUBLISHED_SHA256, check_hash)
        hub.load_strict(self, state, skip)


def _make_blocks(cfg: RevBiFPNConfig) -> list[ReversibleBlock]:
    n_scales = len(cfg.channels)
    n_stages = n_scales - 1 + cfg.num_ext_layers
    blocks: list[ReversibleBlock] = [SpaceToDepth(STEM_BLOCK)]
    for stage in range(1, n_stages + 1):
        n = min(stage, n_scales)  # scales present when the stage starts
        drop_path = cfg.drop_path_rate * stage / n_stages
        for _ in range(cfg.blocks_per_stage):
            blocks.append(ScaleBlocks([_make_residual(cfg, k, drop_path) for k in range(n)]))
        blocks.append(_make_silo(cfg, n, min(n + 1, n_scales), drop_path))
    return blocks


def _make_residual(cfg: RevBiFPNConfig, k: int, drop_path: float) -> RevResidual:
    c = cfg.channels[k]
    c0, c1 = c - c // 2, c // 2  # x0, x1 widths
    args = dict(
        kernel_size=cfg.dw_kernels[k] + cfg.dw_kernel_pads[k],
        expand_ratio=cfg.expand_ratios[k],
        se_ratio=cfg.se_ratios[k],
        drop_path=drop_path,
    )
    return RevResidual(MBConv(c0, c1, **args), MBConv(c1, c0, **args), split=c0)


def _make_silo(cfg: RevBiFPNConfig, n_in: int, n_out: int, drop_path: float) -> RevSilo:
    ch, pad = cfg.channels, cfg.dw_kernel_pads
    down, up = {}, {}
    for i in range(n_out):
        for j in range(n_out):
            if j > i and i < n_in:
                stride = 2 ** (j - i)
                new_scale = j >= n_in  # creating a scale: no drop path on its branches
                down[i, j] = MBConv(
                    ch[i],
                    ch[j],
                    kernel_size=2 * stride - 1 + pad[i],
                    stride=stride,
                    expand_ratio=cfg.expand_ratios[i],
                    se_ratio=cfg.se_ratios[i],
                    drop_path=0.0 if new_scale else drop_path,
                )
            elif j < i:
                up[i, j] = nn.Sequential(
                    MBConv(
                        ch[i],
                        ch[j],
                        kernel_size=3 + pad[i],
                        expand_ratio=cfg.expand_ratios[j],
                        se_ratio=cfg.se_ratios[j],
                        drop_path=drop_path,
                    ),
                    nn.Upsample(scale_factor=2 ** (i - j), mode="bilinear"),
                )
    return RevSilo(n_in, n_out, down, up)


def _make_neck(cfg: RevBiFPNConfig) -> Neck:
    return Neck(
        [
            MBConv(c, h, cfg.neck_kernel, 1, e, s)
            for c, h, e, s in zip(
                cfg.channels, cfg.head_channels, cfg.neck_expand_ratios, cfg.neck_se_ratios
            )
        ]
    )


def _init_weights(model: nn.Module) -> None:
    # The paper's init: Kaiming-normal (fan_out) convs, zero biases, BN weight 1 bias 0;
    # Linear keeps PyTorch's default.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ------------------------------------------------------------------ published checkpoints

# SHA-256 of the released checkpoints, by file name.
PUBLISHED_SHA256 = {
    "revbifpn_s0.pth.tar": "a9ee012a2670003ea18deca1afaed7c1323ffaafc83b0a30874d262bf2403cfa",
    "revbifpn_s1.pth.tar": "584b0c3ea677ac5eff6c0f54b4b683973e7533bfde334155cd770aef041673c4",
    "revbifpn_s2.pth.tar": "62ff9387b498550d31e248742a002be22cb29e800cd387ec9c93b6da7418dcc8",
    "revbifpn_s3.pth.tar": "1695576b09ee9fc584df616abaf0762188122468825cc92b5abfeec63b609d25",
    "revbifpn_s4.pth.tar": "61d7b65524000bb147aac26ad559906a2380e55a499d9d420063cc2b9e2ef42a",
    "revbifpn_s5.pth.tar": "d7713a25c7f62bf4b9ebaa2693a7b6896e7965c6647cbd1d98eddeae8b74cdc3",
    "revbifpn_s6.pth.tar": "31f355d5fb54610ad9051d08d0ec10bb0d33f40c0936352cb863b9f9a3d4fa09",
}
