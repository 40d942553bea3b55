"""Rev-MViT-B (models/rev_mvit.py): layout, resolution and input validation.

The engine guarantees (gradients, replay, modes, shared drop path, published counts and
MACs, memory) are checked for every registered model in tests/test_model_contract.py;
the full model is built on the meta device here.
"""

from __future__ import annotations

import pytest
import torch

from revbench.models import ResolutionError, ReversibleStack, create, get_info
from revbench.models.rev_mvit import RevMViT, StageTransition

TINY = dict(
    embed_dim=16, num_heads=2, depth=6, transitions=(1, 3), img_size=32, kv_stride=2,
    num_classes=10,
)  # fmt: skip


def full() -> RevMViT:
    with torch.device("meta"):
        return create("rev_mvit_base")


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


# -------------------------------------------------------------------------- resolution


def test_resolution_multiple_is_patch_stride_times_two_per_transition() -> None:
    info = get_info("rev_mvit_base")
    assert info.resolution_multiple == 4 * 2**3
    with pytest.raises(ResolutionError, match="img_size 240 .*multiple of 32.* 224 or 256"):
        create("rev_mvit_base", img_size=240)
    # Two transitions halve the grid twice: 16 is enough.
    info.check_resolution(48, {"transitions": (1, 3), "depth": 6})
    model = create("rev_mvit_base", **{**TINY, "img_size": 48})
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 10)


# -------------------------------------------------------------------------- validation


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
    # Suites written in TOML give lists.
    assert create("rev_mvit_base", **{**TINY, "transitions": [1, 3]}).cfg.transitions == (1, 3)


def test_wrong_input_size_raises() -> None:
    with pytest.raises(ValueError, match="built for"):
        create("rev_mvit_base", **TINY)(torch.randn(1, 3, 64, 64))
