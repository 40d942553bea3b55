"""Data-parallel training: every reversible family trains correctly under DDP (gloo, 2 ranks
on this CPU), and the estimator's model of DDP's memory matches a real gloo run.

Multi-process tests are expensive (two spawned interpreters each), so each test runs all
its cases inside one pair of ranks.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from revbench.axes import DdpConfig, world_size_of
from revbench.ddp import init_rank, reducer_bucket_bytes, run_ranks, wrap
from revbench.methods.cpu import tracked_peak
from revbench.methods.estimate import estimate_memory
from revbench.methods.estimate_ddp import DdpBuckets
from revbench.models import create
from revbench.scenario import build_step

pytestmark = pytest.mark.usefixtures("one_thread")

WORLD = 2
PER_RANK = 2  # samples per rank

# One tiny model per reversible family, stochastic parts off (drop path, head dropout), so
# a rank's step is a function of its batch alone.
FAMILIES = {
    "RevViT": ("revvit_small", dict(embed_dim=32, depth=2, num_heads=2, img_size=32,
                                    patch_size=8, num_classes=10, drop_path_rate=0.0)),
    "Rev-MViT": ("rev_mvit_base", dict(embed_dim=16, num_heads=2, depth=6, transitions=(1, 3),
                                       img_size=32, kv_stride=2, num_classes=10,
                                       drop_path_rate=0.0)),
    "RevBiFPN": ("revbifpn_s0", dict(channels=(16,) * 4, head_channels=(16,) * 4,
                                     fc_features=16, img_size=64, num_classes=10,
                                     drop_path_rate=0.0, drop_rate=0.0)),
    "RevCol": ("revcol_tiny", dict(channels=(8, 16, 32, 64), layers=(1, 1, 1, 1), img_size=64,
                                   num_classes=10, drop_path=0.0)),
}  # fmt: skip
LAYERNORM_ONLY = ("RevViT", "Rev-MViT")  # no BatchNorm: the whole batch is one computation


def _model(family: str) -> nn.Module:
    name, overrides = FAMILIES[family]
    torch.manual_seed(0)
    return create(name, mode="reversible", **overrides).train()


def _batch(family: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The concatenated batch of every rank (rank r takes rows r*PER_RANK...)."""
    side = FAMILIES[family][1]["img_size"]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(WORLD * PER_RANK, 3, side, side, generator=g)
    return x, torch.randint(0, 10, (WORLD * PER_RANK,), generator=g)


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def ddp_grads(rank: int, world_size: int, init_file: str) -> dict:
    """One DDP step of every family on this rank's slice of the batch: the gradients."""
    device = init_rank(rank, world_size, init_file, "cpu")
    out = {}
    for family in FAMILIES:
        model = _model(family)
        x, y = _batch(family)
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        F.cross_entropy(model(x[rows]), y[rows]).backward()  # which parameters get no grad
        unused = [n for n, p in model.named_parameters() if p.grad is None]
        model.zero_grad(set_to_none=True)
        ddp = wrap(model, device, DdpConfig(world_size), ignore=unused)
        F.cross_entropy(ddp(x[rows]), y[rows]).backward()
        out[family] = _grads(model)
    return out


def test_one_ddp_step_of_every_reversible_family_matches_a_single_process_step():
    per_rank = run_ranks(ddp_grads, WORLD)
    for family in FAMILIES:
        ranks = [r[family] for r in per_rank]
        names = set(ranks[0])
        # DDP's all-reduce leaves the same gradients on every rank (to float rounding: gloo
        # may sum in another order on each rank).
        for n in names:
            torch.testing.assert_close(ranks[1][n], ranks[0][n], rtol=1e-5, atol=1e-8)
        # They are the mean of each rank's own single-process gradients (BatchNorm normalises
        # each rank's batch by itself under DDP without SyncBatchNorm, as it does here).
        x, y = _batch(family)
        expected: dict[str, torch.Tensor] = {}
        for r in range(WORLD):
            model = _model(family)
            rows = slice(r * PER_RANK, (r + 1) * PER_RANK)
            F.cross_entropy(model(x[rows]), y[rows]).backward()
            for n, g in _grads(model).items():
                expected[n] = expected.get(n, 0) + g / WORLD
        # the same parameters get gradients (RevCol's first column leaves its alphas unused)
        assert names == set(expected)
        for n in names:
            torch.testing.assert_close(ranks[0][n], expected[n], rtol=1e-4, atol=1e-6)
        if family in LAYERNORM_ONLY:  # and, with no BatchNorm, the concatenated batch's
            model = _model(family)
            F.cross_entropy(model(x), y).backward()
            for n, g in _grads(model).items():
                torch.testing.assert_close(ranks[0][n], g, rtol=1e-4, atol=1e-6)


class Mlp(nn.Module):
    """Every parameter and gradient a multiple of 512 bytes: the estimator's CUDA block
    rounding leaves them as they are, so its DDP bytes compare exactly with a CPU run."""

    num_classes = 128

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(192, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
            nn.Linear(256, 128),
        )  # fmt: skip

    def forward(self, x):
        return self.net(x)


CONFIGS = [
    DdpConfig(WORLD, bucket_cap_mb=0.1),  # several buckets
    DdpConfig(WORLD, bucket_cap_mb=0.1, gradient_as_bucket_view=True),
    DdpConfig(WORLD),  # the defaults: 25 MiB, a 1 MiB first bucket
]


def _step(model):
    return build_step(model, scenario="train", precision="fp32", batch_size=4, resolution=8,
                      device="cpu")  # fmt: skip


def real_ddp_memory(rank: int, world_size: int, init_file: str) -> list:
    """Per config: the rank's tracked peak under DDP and the Reducer's bucket bytes; last,
    the same step's peak without DDP."""
    device = init_rank(rank, world_size, init_file, "cpu")
    out = []
    for config in CONFIGS:
        torch.manual_seed(0)
        model = Mlp()
        step = _step(model)
        step.model = wrap(model, device, config)
        out.append((tracked_peak(step, warmup=2), reducer_bucket_bytes(step.model)))
    torch.manual_seed(0)
    out.append(tracked_peak(_step(Mlp()), warmup=2))
    return out


def test_estimated_ddp_buckets_and_peak_match_a_real_gloo_run():
    real = run_ranks(real_ddp_memory, WORLD)
    assert real[0] == real[1]  # the same model and batch size: the same memory on each rank
    *ddp_runs, real_plain = real[0]
    plain = estimate_memory(Mlp, batch_size=4, resolution=8).peak_bytes
    for config, (real_peak, real_buckets) in zip(CONFIGS, ddp_runs):
        # The bucket layout DDP rebuilt after its first step, reproduced from the order the
        # gradients became ready in a single process.
        model = Mlp()
        buckets = DdpBuckets(model, config)
        _step(model).run()
        with buckets.alive():
            pass
        assert buckets.bucket_bytes == real_buckets, config
        # What DDP adds to the peak: the estimate (fake tensors) equals the real run's.
        estimated = estimate_memory(Mlp, batch_size=4, resolution=8, ddp=config).peak_bytes
        assert estimated - plain == real_peak - real_plain, config
    params = sum(p.numel() * p.element_size() for p in Mlp().parameters())
    without_view, with_view, _ = (peak - real_plain for peak, _ in ddp_runs)
    assert without_view == params  # a second copy of every gradient
    assert 0 < with_view < without_view  # gradients live in the buckets


def test_ddp_scenarios_name_their_world_size(run_cli, tmp_path):
    assert world_size_of("ddp-8") == 8 and world_size_of("train") is None
    assert world_size_of("ddp-0") is None and world_size_of("ddp-x") is None
    code, out, err = run_cli(
        "run", "--suite", "ddp-mem", "--device", "estimate", "--dry-run",
    )  # fmt: skip
    assert code == 0, err
    assert "ddp-2" in out and "ddp-8" in out
    code, _, err = run_cli(
        "run", "--suite", "ci", "--device", "estimate", "--scenario", "ddp", "--dry-run",
    )  # fmt: skip
    assert code == 2 and "--world-size" in err
    code, out, _ = run_cli(
        "run", "--suite", "ci", "--device", "estimate", "--scenario", "ddp", "--world-size",
        "4", "--models", "test_tiny_cnn", "--dry-run",
    )  # fmt: skip
    assert code == 0 and "ddp-4" in out


def test_a_ddp_cell_on_the_estimator_is_a_train_step_plus_its_buckets():
    from revbench.methods.estimate_method import EstimateMethod
    from revbench.suite import make_cell

    cells = {
        s: make_cell("test_tiny_cnn", resolution=32, batch_size=2, scenario=s, method="estimate")
        for s in ("train", "ddp-2", "ddp-8")
    }
    peaks = {s: EstimateMethod().measure(c).peak_bytes for s, c in cells.items()}
    params = sum(p.numel() * p.element_size() for p in create("test_tiny_cnn").parameters())
    assert peaks["ddp-2"] == peaks["ddp-8"] > peaks["train"]  # world size changes nothing
    assert peaks["ddp-2"] - peaks["train"] >= params
