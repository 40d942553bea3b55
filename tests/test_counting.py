"""thop's MACs under the published convention count the same on the meta device as on real
CPU tensors: every rule reads shapes, never values (the ci baseline's counts agree too)."""

from __future__ import annotations

import pytest
import torch

from revbench.counting import count_macs_thop
from revbench.models import create

pytestmark = pytest.mark.usefixtures("one_thread")

# Conv with and without bias, BatchNorm, bilinear upsampling, Linear, attention (thop's own
# rules for what revbench leaves to it), each model small.
CASES = [
    ("revbifpn_s0", 64, {}),
    ("bifpn", 128, dict(width=16, num_layers=1)),
    ("vit_small_patch16_224", 32, dict(depth=2, embed_dim=32, num_heads=2)),
    ("resnet50", 32, dict(layers=(1, 1, 1, 1))),
]


@pytest.mark.parametrize("name, resolution, overrides", CASES, ids=[c[0] for c in CASES])
def test_meta_device_counts_what_real_tensors_count(name, resolution, overrides):
    torch.manual_seed(0)
    real = count_macs_thop(create(name, img_size=resolution, **overrides), resolution)
    with torch.device("meta"):
        on_meta = create(name, img_size=resolution, **overrides)
    assert count_macs_thop(on_meta, resolution) == real > 0
