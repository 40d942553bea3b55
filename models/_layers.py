"""Small layers and helpers shared by the family files."""

from __future__ import annotations

from torch import Tensor, nn


def drop_path_layer(rate: float) -> nn.Module:
    """Stochastic depth on a residual branch: whole samples dropped, the rest scaled by
    1 / (1 - rate). The identity at rate 0, so a model without drop path draws nothing."""
    if rate <= 0:
        return nn.Identity()
    # timm (and torchvision under it) takes seconds to import: loaded when a model is
    # built, not when the registry is read (an answer from the estimate cache builds none)
    from timm.layers import DropPath

    return DropPath(rate)


def drop_path_rates(max_rate: float, depth: int) -> list[float]:
    """Linear from 0 at the first block to `max_rate` at the last."""
    # Plain Python, not torch.linspace: builders also run on the meta device, where a
    # tensor's values cannot be read.
    return [max_rate * i / max(depth - 1, 1) for i in range(depth)]


def init_vit_weights(model: nn.Module) -> None:
    """ViT initialisation: truncated-normal (std 0.02) linear weights, zero biases,
    LayerNorm weight 1 and bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_input(x: Tensor, img_size: int, in_chans: int) -> None:
    """Models with a position embedding take exactly the side they were built for."""
    if x.ndim != 4 or x.shape[1] != in_chans or tuple(x.shape[-2:]) != (img_size, img_size):
        raise ValueError(
            f"input of shape {tuple(x.shape)} is invalid: the model was built for "
            f"(B, {in_chans}, {img_size}, {img_size}); rebuild it with img_size= to change"
        )
