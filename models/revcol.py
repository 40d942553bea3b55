"""RevCol: Reversible Column Networks (Cai et al., ICLR 2023, arXiv:2212.11696).

A conv stem (4x4 stride 4, channels-first LayerNorm) feeds N identical columns. Each
column holds four levels at strides 4/8/16/32 and carries the state c = (c0, c1, c2, c3)
to the next column through the multi-level reversible connection, levels 0 to 3:

    c_l(i) = alpha_l(i) * c_l(i-1) + Level_l(down(c_{l-1}(i)) + up(c_{l+1}(i-1)))

with c_{-1}(i) = x, the stem output, in every column; the first column has no state, so it
has neither the alpha term nor the up input. Given a column's outputs, its inputs come
back level by level, 3 down to 0 (level l needs c_{l-1}(i), an output, and c_{l+1}(i-1),
already rebuilt):

    c_l(i-1) = (c_l(i) - Level_l(down(c_{l-1}(i)) + up(c_{l+1}(i-1)))) / alpha_l(i)

alpha is learnable per channel, (1, C, 1, 1), initialised to 0.5 and clamped to
|alpha| >= 1e-3 (sign kept) before every forward. Level_l is a fusion (down: conv 2x2
stride 2 + LayerNorm, identity at level 0; up: Linear + LayerNorm + nearest x2, none at
level 3) followed by ConvNeXt blocks (depthwise 3x3, LayerNorm, Linear(C, 4C), GELU,
Linear(4C, C), layer scale 1e-6, drop path). The head reads c3 of the last column:
global mean -> LayerNorm -> Linear.

Each column is one `ReversibleBlock` over (x, c0, c1, c2, c3) -> (x, c0', c1', c2', c3')
(the first maps (x,) -> (x, c0', ...)); x passes through and its gradient accumulates over
the columns. All columns form one `ReversibleStack`, run in any of the engine's modes.

Intermediate supervision (pre-training in the paper) is optional and off by default, so
parameter counts match the published classifiers: see `RevCol.forward`. It changes the
output (its config's `task` says so), so a classification cell refuses it. Published
figures: revbench/data/published.csv. Published weights: the official releases, remapped
from megvii-research's FullNet names (`to_revbench_keys`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import hub
from ._layers import drop_path_layer, drop_path_rates
from .configs.revcol import PUBLISHED_URLS, STEM_STRIDE, VARIANTS, RevColConfig  # noqa: F401 (the family's sizes, named here too)
from .reversible import ReversibleBlock, ReversibleModel, ReversibleStack

ALPHA_INIT = 0.5
ALPHA_MIN_ABS = 1e-3

# ---------------------------------------------------------------------------- building blocks


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map (ConvNeXt's channels-first norm)."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # (B, C, H, W)


class ConvNeXtBlock(nn.Module):
    """x + drop_path(gamma * Linear(GELU(Linear(LN(dwconv(x)))))), hidden width mlp_ratio * C."""

    def __init__(
        self,
        dim: int,
        kernel_size: int = 3,
        mlp_ratio: int = 4,
        drop_path: float = 0.0,
        layer_scale: float = 1e-6,
    ):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, mlp_ratio * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(mlp_ratio * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))
        self.drop_path = drop_path_layer(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))  # (B, H, W, C)
        y = (self.gamma * y).permute(0, 3, 1, 2)  # (B, C, H, W)
        return x + self.drop_path(y)


class Up(nn.Module):
    """up(c_{l+1}): Linear(C_{l+1} -> C_l) + channels-last LayerNorm, then nearest x2."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim, eps=1e-6)

    def forward(self, c: Tensor) -> Tensor:
        y = self.norm(self.proj(c.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)  # (B, C_l, h, w)
        return F.interpolate(y, scale_factor=2.0, mode="nearest")  # (B, C_l, 2h, 2w)


class Level(nn.Module):
    """Level_l(down(c_{l-1}) + up(c_{l+1})): the fusion, then the level's ConvNeXt blocks."""

    def __init__(
        self,
        level: int,
        channels: tuple[int, ...],
        depth: int,
        kernel_size: int,
        drop_paths: list[float],
        has_up: bool,
    ):
        super().__init__()
        dim = channels[level]
        self.down = (
            nn.Sequential(nn.Conv2d(channels[level - 1], dim, 2, stride=2), LayerNorm2d(dim, 1e-6))
            if level > 0
            else nn.Identity()  # level 0 reads the stem output at its own stride
        )
        self.up = Up(channels[level + 1], dim) if has_up else None
        self.blocks = nn.Sequential(
            *(ConvNeXtBlock(dim, kernel_size, drop_path=drop_paths[j]) for j in range(depth))
        )

    def forward(self, c_down: Tensor, c_up: Tensor | None = None) -> Tensor:
        x = self.down(c_down)  # (B, C_l, H_l, W_l)
        if self.up is not None:
            x = x + self.up(c_up)
        return self.blocks(x)


class Column(ReversibleBlock):
    """One column: the four-level reversible connection, its inverse and its backward pass.

    forward(x, c0, c1, c2, c3) -> (x, c0', c1', c2', c3'); the first column takes (x,) only.
    """

    def __init__(
        self,
        channels: tuple[int, ...],
        layers: tuple[int, ...],
        kernel_size: int,
        drop_paths: list[float],
        first: bool,
    ):
        super().__init__()
        self.first = first
        start = [sum(layers[:l]) for l in range(4)]
        for l in range(4):
            # The first column has no state: its alphas multiply nothing and receive no
            # gradient, but they exist (and count) as in the published models.
            setattr(self, f"alpha{l}", nn.Parameter(torch.full((1, channels[l], 1, 1), ALPHA_INIT)))
            dps = drop_paths[start[l] : start[l] + layers[l]]
            level = Level(l, channels, layers[l], kernel_size, dps, has_up=not first and l < 3)
            setattr(self, f"level{l}", level)

    def alpha(self, l: int) -> Tensor:
        return getattr(self, f"alpha{l}")

    def level(self, l: int) -> Level:
        return getattr(self, f"level{l}")

    def _level_args(self, l: int, down: Tensor, up: Tensor | None) -> tuple[Tensor, ...]:
        # Only tensors go through record/replay (its RNG snapshot inspects every argument).
        return (down,) if self.first or l == 3 else (down, up)

    def forward(self, x: Tensor, *cs: Tensor) -> tuple[Tensor, ...]:
        outs: list[Tensor] = []
        for l in range(4):
            down = outs[l - 1] if l else x  # c_{l-1}(i), this column's level below
            up = None if self.first or l == 3 else cs[l + 1]  # c_{l+1}(i-1)
            y = self.record(f"L{l}", self.level(l), *self._level_args(l, down, up))
            if not self.first:
                y = self.alpha(l) * cs[l] + y
            outs.append(y)
        return (x, *outs)

    @torch.no_grad()
    def inverse(self, x: Tensor, *ys: Tensor) -> tuple[Tensor, ...]:
        if self.first:
            return (x,)  # nothing to rebuild: the first column starts from no state
        cs: list[Tensor | None] = [None] * 4
        for l in (3, 2, 1, 0):
            down = ys[l - 1] if l else x
            out = self.level(l)(*self._level_args(l, down, cs[l + 1] if l < 3 else None))
            cs[l] = (ys[l] - out) / self.alpha(l)
        return (x, *cs)  # type: ignore[return-value]

    def backward_pass(
        self, ys: tuple[Tensor, ...], dys: tuple[Tensor, ...]
    ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        """Inversion: rebuild the inputs level by level while backpropagating (see _walk)."""
        return self._walk(ys, dys, None)

    def backward_from_inputs(
        self, xs: tuple[Tensor, ...], ys: tuple[Tensor, ...], dys: tuple[Tensor, ...]
    ) -> tuple[Tensor, ...]:
        """The engine's keep_inputs step: the same level-by-level walk, reading the stored
        inputs instead of rebuilding them. Exact, and it holds one level's recompute graph
        at a time, not a whole column's. Masks replay per level.
        """
        return self._walk(ys, dys, xs)[1]

    def _walk(
        self, ys: tuple[Tensor, ...], dys: tuple[Tensor, ...], xs: tuple[Tensor, ...] | None
    ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        """Levels 3 -> 0: recompute Level_l, backpropagate into it, get c_l(i-1).

        g[l] collects dL/dc_l(i): the column's output gradient plus what level l+1 sends
        back through its down input. dL/dc_l(i-1) = alpha_l * g[l] + what level l-1 sends
        back through its up input; alpha_l gets sum(g[l] * c_l(i-1)). c_l(i-1) is read from
        `xs` when given, else rebuilt as (c_l(i) - Level_l(...)) / alpha_l.
        """
        x, *c_out = ys
        dx, *g = dys
        c_in: list[Tensor | None] = [None] * 4 if xs is None else list(xs[1:]) or [None] * 4
        dc_in: list[Tensor | None] = [None] * 4
        for l in (3, 2, 1, 0):
            down = c_out[l - 1] if l else x
            up = c_in[l + 1] if l < 3 else None
            with torch.enable_grad():
                args = tuple(t.detach().requires_grad_() for t in self._level_args(l, down, up))
                out = self.replay(f"L{l}", self.level(l), *args)
                torch.autograd.backward(out, g[l])
            if l:
                g[l - 1] = g[l - 1] + args[0].grad
            else:
                dx = dx + args[0].grad
            if len(args) == 2:
                dc_in[l + 1] = dc_in[l + 1] + args[1].grad
            del args
            if self.first:
                del out
                continue
            alpha = self.alpha(l)
            with torch.no_grad():
                if xs is None:
                    c_in[l] = (c_out[l] - out) / alpha
                del out  # level l's recompute graph goes with its output
                dc_in[l] = g[l] * alpha
            with torch.enable_grad():
                torch.autograd.backward(alpha * c_in[l], g[l])  # alpha's gradient only
        if self.first:
            return (x,), (dx,)
        return (x, *c_in), (dx, *dc_in)  # type: ignore[return-value]


class ClassifierHead(nn.Module):
    """Global mean -> LayerNorm(eps 1e-6) -> Linear."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.norm(x.mean((2, 3))))  # (B, num_classes)


class Decoder(nn.Module):
    """Image reconstruction from c3 (intermediate supervision): three stages of
    1x1 conv + LayerNorm + GELU, bilinear x2, one ConvNeXt block (hidden width C), then a
    1x1 conv to 3 * 4 * 4 channels and pixel shuffle 4 back to the input resolution.
    """

    def __init__(self, channels: tuple[int, ...], kernel_size: int = 3):
        super().__init__()
        dims = channels[::-1]  # coarse to fine
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(dims[i - 1], dims[i], 1),
                LayerNorm2d(dims[i], 1e-6),
                nn.GELU(),
                nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=True),
                ConvNeXtBlock(dims[i], kernel_size, mlp_ratio=1),
            )
            for i in range(1, 4)
        )
        self.proj = nn.Conv2d(dims[-1], 3 * 4 * 4, 1)

    def forward(self, c3: Tensor) -> Tensor:
        x = c3  # (B, C3, H/32, W/32)
        for stage in self.stages:
            x = stage(x)
        return F.pixel_shuffle(self.proj(x), 4)  # (B, 3, H, W), logits of pixel values


# ------------------------------------------------------------------------------------ model


class RevColOutput(NamedTuple):
    """Training output with intermediate supervision (see `intermediate_supervision_loss`)."""

    logits: Tensor  # (B, K), the final classifier
    aux_logits: tuple[Tensor, ...]  # 3 x (B, K), after columns N/4, N/2, 3N/4
    reconstructions: tuple[Tensor, ...]  # 3 x (B, 3, H, W) pixel logits, same columns


class RevCol(ReversibleModel):
    """RevCol classifier: stem, N reversible columns, head on the last column's c3.

    Memory design (`store_columns`). Rebuilding a column's inputs divides by alpha, and
    the up path's LayerNorm amplifies the error further, so rebuilt states degrade with
    every column walked back. Measured (fp32, init weights, alpha 0.5, max error of the
    rebuilt c relative to the forward's, chaining `Column.inverse` 1 / 3 / 7 / 15
    columns back from the last):
        tiny widths 8-16-32-64, 64px:   8e-7 / 1.4e-5 / 2.5e-3 / 38
        RevCol-T widths, 224px:         5e-7 / 7.9e-6 / 1.9e-3 / 21
    i.e. x3-4 per column: tolerable for RevCol-T (4 columns), not for S/L (8, 1e-3) and
    useless for B (16). Store what is needed, then: by default (True) each column's inputs
    are stored, which are the previous column's outputs (x is one shared tensor), so
    memory grows by one column state per column (c0..c3: 1.5 MB per 224px sample at T
    widths, against ~44 MB of activations per column in vanilla), and backward walks the
    levels 3 -> 0 from those exact values (`backward_from_inputs`): gradients equal plain
    autograd, and only one level's recompute graph is alive at a time. RevCol-T, batch 8,
    224px, estimated peak (MB = 1e6 bytes): 655; recomputing whole columns instead 782;
    checkpoint mode 738; vanilla 1653. False stores no column state and rebuilds it by
    inversion (631, flat in columns): for memory studies, gradients drift as above.
    """

    def __init__(self, cfg: RevColConfig):
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        ch = cfg.channels
        self.stem = nn.Sequential(
            nn.Conv2d(3, ch[0], STEM_STRIDE, stride=STEM_STRIDE), LayerNorm2d(ch[0], 1e-6)
        )
        drop_paths = drop_path_rates(cfg.drop_path, sum(cfg.layers))
        columns = [
            Column(ch, cfg.layers, cfg.kernel_size, drop_paths, first=i == 0)
            for i in range(cfg.num_columns)
        ]
        if cfg.intermediate_supervision:
            # Four runs of N/4 columns, so the auxiliary heads can read c3 between them.
            k = cfg.num_columns // 4
            self.columns = nn.ModuleList(
                ReversibleStack(columns[j * k : (j + 1) * k], cfg.mode, cfg.store_columns)
                for j in range(4)
            )
            self.aux_heads = nn.ModuleList(ClassifierHead(ch[3], cfg.num_classes) for _ in range(3))
            self.decoders = nn.ModuleList(Decoder(ch, cfg.kernel_size) for _ in range(3))
        else:
            self.columns = ReversibleStack(columns, cfg.mode, cfg.store_columns)
        self.head = ClassifierHead(ch[3], cfg.num_classes)
        self.apply(_init_weights)

    @torch.no_grad()
    def clamp_alphas(self) -> None:
        """|alpha| >= 1e-3 keeping the sign (0 counts as positive), in place."""
        for m in self.modules():
            if isinstance(m, Column):
                for l in range(4):
                    a = m.alpha(l).data  # .data: no version bump for graphs that saved alpha
                    a.copy_(
                        torch.where(a < 0, a.clamp(max=-ALPHA_MIN_ABS), a.clamp(min=ALPHA_MIN_ABS))
                    )

    def forward(self, images: Tensor) -> Tensor | RevColOutput:
        """(B, 3, H, W) -> logits (B, K).

        With intermediate supervision in train mode, returns a `RevColOutput` instead:
        the final logits plus, after columns N/4, N/2 and 3N/4, an auxiliary classifier's
        logits and an image reconstruction (pixel logits); in eval mode, logits only.
        """
        self.clamp_alphas()
        x = self.stem(images)  # (B, C0, H/4, W/4)
        if not self.cfg.intermediate_supervision:
            _, _, _, _, c3 = self.columns(x)
            return self.head(c3)
        state: tuple[Tensor, ...] = (x,)
        aux_logits, reconstructions = [], []
        for j, stack in enumerate(self.columns):
            state = stack(*state)
            if j < 3 and self.training:
                aux_logits.append(self.aux_heads[j](state[4]))
                reconstructions.append(self.decoders[j](state[4]))
        logits = self.head(state[4])
        if not self.training:
            return logits
        return RevColOutput(logits, tuple(aux_logits), tuple(reconstructions))

    def load_pretrained(self, source: str | os.PathLike, check_hash: bool = True) -> None:
        """Load a checkpoint (path or URL, official or revbench layout) strictly."""
        state = to_revbench_keys(hub.load_state_dict(source, check_hash=check_hash), self.cfg)
        hub.load_strict(self, state)


def intermediate_supervision_loss(
    out: RevColOutput,
    images01: Tensor,
    targets: Tensor,
    recon_weight: float = 4.0,
    cls_weight: float = 0.8,
) -> Tensor:
    """RevCol's compound pre-training loss (official defaults FCOE 4.0, CCOE 0.8):

        sum_j [BCE(rec_j, img) * (1 - j/3) * recon_weight + CE(aux_j, y) * (j+1)/4 * cls_weight]
        + CE(logits, y),   j = 0, 1, 2

    `images01` is the input image in [0, 1] (before normalisation); it is clamped to
    [0.01, 0.99] as the BCE target. Early columns weigh reconstruction, late ones the labels.
    """
    target = images01.clamp(0.01, 0.99)
    loss = F.cross_entropy(out.logits, targets)
    n = len(out.reconstructions)
    for j, (rec, aux) in enumerate(zip(out.reconstructions, out.aux_logits)):
        loss = loss + F.binary_cross_entropy_with_logits(rec, target) * (1 - j / n) * recon_weight
        loss = loss + F.cross_entropy(aux, targets) * (j + 1) / (n + 1) * cls_weight
    return loss


def _init_weights(m: nn.Module) -> None:
    # As the official models: truncated normal std 0.02 for convs and linears, zero bias.
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        from timm.layers import trunc_normal_  # seconds to import: only when built

        trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------- published checkpoints


def official_keys(cfg: RevColConfig) -> list[tuple[str, str]]:
    """Rules from the official FullNet's names (models/revcol.py there) to revbench's.

    Official: `subnet{i}.alpha{l}`, `subnet{i}.level{l}.fusion.{down,up}`, `...blocks`;
    head `cls.classifier.{0,1}`, or with intermediate supervision `cls_blocks.{0..3}` (the
    last is the final head) and `decoder_blocks.{0..2}` (`proj_layers.{s}.{0,1}`,
    `normal_layers.{s}.0`, `projback.0`).
    """
    k = cfg.num_columns // 4
    rules = []
    for i in range(cfg.num_columns):
        dst = f"columns.{i // k}.{i % k}." if cfg.intermediate_supervision else f"columns.{i}."
        src = rf"^subnet{i}\."
        rules += [
            (src + r"alpha", dst + "alpha"),
            (src + r"level(\d)\.fusion\.down\.", dst + r"level\1.down."),
            (src + r"level(\d)\.fusion\.up\.channel_reschedule\.0\.", dst + r"level\1.up.proj."),
            (src + r"level(\d)\.fusion\.up\.channel_reschedule\.1\.", dst + r"level\1.up.norm."),
            (src + r"level(\d)\.blocks\.", dst + r"level\1.blocks."),
        ]
    rules += [
        (r"^cls\.classifier\.0\.", "head.norm."),
        (r"^cls\.classifier\.1\.", "head.fc."),
        (r"^cls_blocks\.3\.classifier\.0\.", "head.norm."),
        (r"^cls_blocks\.3\.classifier\.1\.", "head.fc."),
        (r"^cls_blocks\.([0-2])\.classifier\.0\.", r"aux_heads.\1.norm."),
        (r"^cls_blocks\.([0-2])\.classifier\.1\.", r"aux_heads.\1.fc."),
        (r"^decoder_blocks\.(\d)\.proj_layers\.(\d)\.", r"decoders.\1.stages.\2."),
        (r"^decoder_blocks\.(\d)\.normal_layers\.(\d)\.0\.", r"decoders.\1.stages.\2.4."),
        (r"^decoder_blocks\.(\d)\.projback\.0\.", r"decoders.\1.proj."),
    ]
    return rules


def to_revbench_keys(state: Mapping[str, Tensor], cfg: RevColConfig) -> dict[str, Tensor]:
    """RevCol weights in the official or revbench's own layout, in revbench's names.

    A plain classifier drops the auxiliary heads and decoders of an intermediate-
    supervision checkpoint: they are not part of it.
    """
    if not any(k.startswith("subnet0.") for k in state):
        return dict(state)
    state = hub.rename_keys(state, official_keys(cfg))
    if not cfg.intermediate_supervision:
        state = {k: v for k, v in state.items() if not k.startswith(("aux_heads.", "decoders."))}
    return state
