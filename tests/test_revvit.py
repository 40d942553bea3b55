"""RevViT (models/revvit.py): counts, shapes, modes and input validation.

Full-size models are built on the meta device (no memory); behaviour is checked on tiny
models (embed 32, depth 3, 2 heads, 32px, patch 8) with drop path active.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from revbench.counting import count_macs, count_params
from revbench.models import ResolutionError, create, get_info, list_models
from revbench.models.revvit import CONFIGS, RevViT

TINY = dict(embed_dim=32, depth=3, num_heads=2, img_size=32, patch_size=8, num_classes=10)


def architecture_params(C: int, depth: int, patch: int = 16, img: int = 224, K: int = 1000) -> int:
    """REFERENCE §2 counted by hand: patch conv + position embedding, per block
    F (LayerNorm, qkv, proj) and G (LayerNorm, two linears), LayerNorm(2C), head."""
    tokens = (img // patch) ** 2
    stem = 3 * patch * patch * C + C + tokens * C
    F = 2 * C + (C * 3 * C + 3 * C) + (C * C + C)
    G = 2 * C + (C * 4 * C + 4 * C) + (4 * C * C + C)
    return stem + depth * (F + G) + 2 * (2 * C) + (2 * C * K + K)


# ------------------------------------------------------------------- registry, counts


def test_registered_sizes() -> None:
    infos = list_models(family="RevViT")
    assert [(i.name, i.size) for i in infos] == [
        ("revvit_small", "S"),
        ("revvit_base", "B"),
        ("revvit_large", "L"),
    ]
    for info in infos:
        assert info.kind == "reversible"
        assert info.native_resolution == 224 and info.resolution_multiple == 16
        assert info.modes == ("reversible", "vanilla", "checkpoint")


@pytest.mark.parametrize(
    "name, exact",
    [("revvit_small", 22_434_664), ("revvit_base", 87_335_656), ("revvit_large", 305_350_632)],
)
def test_param_counts_exact(name: str, exact: int) -> None:
    with torch.device("meta"):
        model = create(name)
    cfg = CONFIGS[name]
    assert count_params(model) == exact == architecture_params(cfg.embed_dim, cfg.depth)
    published = get_info(name).published_params
    if name == "revvit_small":
        assert exact == published  # the paper gives S to the parameter
    else:
        assert abs(exact - published) < 0.5e6  # B and L are published rounded to 1M


@pytest.mark.parametrize("name", ["revvit_small", "revvit_base", "revvit_large"])
def test_macs_match_published(name: str) -> None:
    # FlopCounterMode counts matmuls, convs and attention; fvcore (the published figures)
    # also counts LayerNorm, about 0.2% more.
    with torch.device("meta"):
        model = create(name)
    macs = count_macs(model, 224)
    published = get_info(name).published_macs
    assert macs < published * 1.005
    assert macs > published * 0.99


def test_no_class_token_and_two_stream_head() -> None:
    with torch.device("meta"):
        model = create("revvit_small")
    assert model.pos_embed.shape == (1, 196, 384)  # 14 x 14 patches, no class token
    assert model.norm.normalized_shape == (768,) and model.head.in_features == 768
    assert model.norm.eps == 1e-6 and model.blocks[0].F.norm.eps == 1e-6
    rates = [b.F.drop_path.drop_prob for b in list(model.blocks)[1:]]
    assert rates[-1] == pytest.approx(0.1)  # linear from 0 to the configured rate


# ----------------------------------------------------------------------- behaviour


def tiny(mode: str = "reversible", **kw) -> RevViT:
    torch.manual_seed(0)
    return create("revvit_small", mode=mode, **{**TINY, "drop_path_rate": 0.3, **kw})


@pytest.mark.parametrize("mode", ["reversible", "vanilla", "checkpoint"])
def test_forward_shape(mode: str) -> None:
    model = tiny(mode)
    assert model.mode == mode and model.blocks.mode == mode
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def train_step(model: RevViT, mode: str, x: Tensor) -> dict[str, Tensor]:
    model.set_mode(mode)
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    torch.manual_seed(3)  # the same drop path masks in every mode
    logits = model(x)
    torch.nn.functional.cross_entropy(logits, torch.arange(x.shape[0]) % 10).backward()
    return {
        "logits": logits.detach(),
        "dx": x.grad,
        **{n: p.grad for n, p in model.named_parameters()},
    }


@pytest.mark.parametrize("depth", [2, 3])
def test_gradients_equal_across_modes(depth: int) -> None:
    model = tiny(depth=depth).train()
    x = torch.randn(4, 3, 32, 32)
    want = train_step(model, "vanilla", x)
    model.eval()
    assert not torch.allclose(model(x), want["logits"])  # drop path was active in training
    model.train()
    for mode in ("reversible", "checkpoint"):
        got = train_step(model, mode, x)
        assert got.keys() == want.keys()
        for name, g in got.items():
            err = (g - want[name]).norm() / want[name].norm()
            assert err < 1e-5, (mode, name, err.item())


def test_state_dict_same_in_every_mode() -> None:
    keys = [list(tiny(mode).state_dict()) for mode in ("reversible", "vanilla", "checkpoint")]
    assert keys[0] == keys[1] == keys[2]
    assert "blocks.0.F.attn.qkv.weight" in keys[0] and "blocks.2.G.fc2.bias" in keys[0]


# ----------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"widht": 3}, "unknown override.*widht.*valid: embed_dim"),
        ({"embed_dim": 33}, "embed_dim 33.*num_heads 2"),
        ({"patch_size": 12}, "img_size 32.*patch_size 12"),
        ({"depth": 0}, "depth 0"),
        ({"mode": "fast"}, "mode 'fast'.*reversible"),
        ({"drop_path_rate": 1.5}, "drop_path_rate 1.5"),
    ],
)
def test_bad_overrides_raise(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create("revvit_small", **{**TINY, **overrides})


def test_create_rejects_resolution_not_multiple_of_16() -> None:
    with pytest.raises(ResolutionError, match="multiple of 16"):
        create("revvit_small", img_size=200)


def test_wrong_input_size_raises() -> None:
    with pytest.raises(ValueError, match="built for"):
        tiny()(torch.randn(1, 3, 48, 48))
