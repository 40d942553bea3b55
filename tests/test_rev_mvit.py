"""Rev-MViT-B (models/rev_mvit.py): layout, counts, modes and input validation.

The full model is built on the meta device; gradients are checked on a tiny model with two
transitions (three reversible runs) and drop path active.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from revbench.counting import count_macs, count_params
from revbench.models import ResolutionError, ReversibleStack, create, get_info
from revbench.models.rev_mvit import RevMViT, StageTransition

TINY = dict(
    embed_dim=16, num_heads=2, depth=6, transitions=(1, 3), img_size=32, kv_stride=2,
    num_classes=10,
)  # fmt: skip


def full() -> RevMViT:
    with torch.device("meta"):
        return create("rev_mvit_base")


def test_registered() -> None:
    info = get_info("rev_mvit_base")
    assert (info.family, info.size, info.kind) == ("Rev-MViT", "B", "reversible")
    assert info.modes == ("reversible", "vanilla", "checkpoint")
    assert info.resolution_multiple == 32  # patch stride 4, then three 2x Q poolings


def test_layout_of_rev_mvit_base() -> None:
    model = full()
    kinds = [len(m) if isinstance(m, ReversibleStack) else "T" for m in model.layers]
    # 16 blocks, transitions at blocks 1, 3 and 14: reversible runs of 1, 1, 10 and 1.
    assert kinds == [1, "T", 1, "T", 10, "T", 1]
    runs = [m for m in model.layers if isinstance(m, ReversibleStack)]
    stages = [
        (run[0].F.norm.normalized_shape[0], run[0].F.attn.num_heads, run[0].F.attn.hw[0],
         run[0].F.attn.pool_k.conv.stride[0])
        for run in runs
    ]  # fmt: skip
    # width, heads, token grid side, K/V pooling stride
    assert stages == [(96, 1, 56, 4), (192, 2, 28, 2), (384, 4, 14, 1), (768, 8, 7, 1)]
    transitions = [m for m in model.layers if isinstance(m, StageTransition)]
    # Transitions read the concatenated streams (2C = next width) and pool Q by 2.
    assert [(t.norm.normalized_shape[0], t.attn.pool_q.conv.stride[0]) for t in transitions] == [
        (192, 2),
        (384, 2),
        (768, 2),
    ]
    assert model.head.in_features == 2 * 768


def test_param_count_exact() -> None:
    params = count_params(full())
    assert params == 39_689_320
    assert abs(params - get_info("rev_mvit_base").published_params) < 0.05e6  # "39.7M"


def test_macs_match_published() -> None:
    # FlopCounterMode omits the LayerNorms fvcore counts (about 0.4% here).
    macs = count_macs(full(), 224)
    assert 0.98 < macs / get_info("rev_mvit_base").published_macs < 1.0


# ----------------------------------------------------------------------- behaviour


def tiny(mode: str = "reversible") -> RevMViT:
    torch.manual_seed(0)
    return create("rev_mvit_base", mode=mode, drop_path_rate=0.4, **TINY)


@pytest.mark.parametrize("mode", ["reversible", "vanilla", "checkpoint"])
def test_forward_shape(mode: str) -> None:
    model = tiny(mode)
    assert all(m.mode == mode for m in model.layers if isinstance(m, ReversibleStack))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def train_step(model: RevMViT, mode: str, x: Tensor) -> dict[str, Tensor]:
    model.set_mode(mode)
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    torch.manual_seed(3)
    logits = model(x)
    torch.nn.functional.cross_entropy(logits, torch.arange(x.shape[0]) % 10).backward()
    return {
        "logits": logits.detach(),
        "dx": x.grad,
        **{n: p.grad for n, p in model.named_parameters()},
    }


def test_gradients_equal_across_modes() -> None:
    model = tiny().train()
    x = torch.randn(4, 3, 32, 32)
    want = train_step(model, "vanilla", x)
    for mode in ("reversible", "checkpoint"):
        got = train_step(model, mode, x)
        assert got.keys() == want.keys()
        for name, g in got.items():
            # The key norm's bias has a true gradient of zero (softmax ignores a shift
            # shared by all keys): there only rounding noise (~1e-10) is compared.
            err = (g - want[name]).norm()
            assert err <= 1e-5 * want[name].norm() + 1e-8, (mode, name, err.item())


# ----------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"transitions": (1, 2)}, "transitions.*no two adjacent"),
        ({"transitions": (0, 3)}, r"transitions.*\[1, 4\]"),
        ({"transitions": (1, 5)}, "transitions"),
        ({"embed_dim": 15}, "embed_dim 15.*num_heads 2"),
        ({"kv_strid": 2}, "unknown override.*kv_strid.*valid:"),
        ({"mode": "rev"}, "mode 'rev'"),
    ],
)
def test_bad_overrides_raise(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create("rev_mvit_base", **{**TINY, **overrides})


def test_transitions_accept_a_list() -> None:
    assert create("rev_mvit_base", **{**TINY, "transitions": [1, 3]}).cfg.transitions == (1, 3)


def test_create_rejects_resolution_not_multiple_of_32() -> None:
    with pytest.raises(ResolutionError, match="multiple of 32"):
        create("rev_mvit_base", img_size=240)
