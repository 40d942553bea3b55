"""RevViT (models/revvit.py): counts by hand, layout, resolution and input validation.

The engine guarantees (gradients, replay, modes, shared drop path, published counts and
MACs, memory) are checked for every registered model in tests/test_model_contract.py.
Full-size models are built on the meta device; behaviour is checked on tiny models.
"""

from __future__ import annotations

import pytest
import torch

from revbench.counting import count_params
from revbench.models import ResolutionError, create, get_info

TINY = dict(embed_dim=32, depth=3, num_heads=2, img_size=32, patch_size=8, num_classes=10)


def architecture_params(C: int, depth: int, patch: int = 16, img: int = 224, K: int = 1000) -> int:
    """The RevViT architecture counted by hand: patch conv + position embedding, per block
    F (LayerNorm, qkv, proj) and G (LayerNorm, two linears), LayerNorm(2C), head."""
    tokens = (img // patch) ** 2
    stem = 3 * patch * patch * C + C + tokens * C
    F = 2 * C + (C * 3 * C + 3 * C) + (C * C + C)
    G = 2 * C + (C * 4 * C + 4 * C) + (4 * C * C + C)
    return stem + depth * (F + G) + 2 * (2 * C) + (2 * C * K + K)


# ------------------------------------------------------------------------------ counts


@pytest.mark.parametrize(
    "name, width, depth, exact",
    [
        ("revvit_small", 384, 12, 22_434_664),  # the paper gives S to the parameter
        ("revvit_base", 768, 12, 87_335_656),  # B and L it rounds to 87M and 305M
        ("revvit_large", 1024, 24, 305_350_632),
    ],
)
def test_param_counts_match_the_architecture(name: str, width: int, depth: int, exact: int):
    assert architecture_params(width, depth) == exact
    with torch.device("meta"):
        assert count_params(create(name)) == exact


def test_no_class_token_and_two_stream_head() -> None:
    with torch.device("meta"):
        model = create("revvit_small")
    assert model.pos_embed.shape == (1, 196, 384)  # 14 x 14 patches, no class token
    assert model.norm.normalized_shape == (768,) and model.head.in_features == 768
    assert model.norm.eps == 1e-6 and model.blocks[0].F.norm.eps == 1e-6
    rates = [b.drop_path for b in list(model.blocks)[1:]]
    assert rates[0] == pytest.approx(0.1 / 11) and rates[-1] == pytest.approx(0.1)  # linear
    keys = list(model.state_dict())
    assert "blocks.0.F.attn.qkv.weight" in keys and "blocks.11.G.fc2.bias" in keys


# -------------------------------------------------------------------------- resolution


def test_resolution_multiple_is_the_patch_size() -> None:
    # Refused as "not a multiple of 16" while the registry restated the multiple.
    info = get_info("revvit_small")
    assert info.resolution_multiple == 16
    info.check_resolution(40, {"patch_size": 8})
    model = create("revvit_small", **{**TINY, "patch_size": 8, "img_size": 40})
    assert model.pos_embed.shape[1] == 25  # a 5 x 5 grid
    assert model(torch.randn(1, 3, 40, 40)).shape == (1, 10)


def test_resolution_not_a_multiple_of_the_patch_size_names_the_nearest() -> None:
    with pytest.raises(ResolutionError, match="img_size 200 .*multiple of 16.* 192 or 208"):
        create("revvit_small", img_size=200)
    with pytest.raises(ResolutionError, match="img_size 40 .*multiple of 16"):
        get_info("revvit_small").check_resolution(40)


# -------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"widht": 3}, "unknown override.*widht.*valid: embed_dim"),
        ({"embed_dim": 33}, "embed_dim 33.*num_heads 2"),
        ({"patch_size": 12}, "img_size 32.*multiple of 12"),
        ({"depth": 0}, "depth 0"),
        ({"mode": "fast"}, "mode 'fast'.*reversible"),
        ({"drop_path_rate": 1.5}, "drop_path_rate 1.5"),
        ({"num_classes": 0}, "num_classes 0"),
    ],
)
def test_bad_overrides_raise(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create("revvit_small", **{**TINY, **overrides})


def test_wrong_input_size_raises() -> None:
    model = create("revvit_small", **TINY)
    with pytest.raises(ValueError, match="built for"):
        model(torch.randn(1, 3, 48, 48))
