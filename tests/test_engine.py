"""The reversible engine's contract, checked against ordinary autograd on the same weights.

Every guarantee in models/reversible.py has a test here that would fail if it broke:
gradient equality (every parameter and the stack input, odd and even depths, drop path on
and off, leaf inputs), exact replay of random masks without touching the global generator
(a drop path per sub-function, or one mask shared by F and G as the official RevViT has it),
generator snapshots only on the path that replays them, BatchNorm running statistics
updated exactly once, autocast replayed in the recompute, inference off the custom path,
`keep_inputs`, and the inverse. The blocks are test-only miniatures, small enough to run
in milliseconds on CPU. Every registered model gets the same guarantees, and activation
memory flat in depth, in tests/test_model_contract.py.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from timm.layers import DropPath
from torch import Tensor, nn

from revbench.models import reversible
from revbench.models.reversible import ReversibleStack, TwoStreamBlock

DIM = 8
MODES = ("reversible", "checkpoint")


# ------------------------------------------------------------------------- test blocks


def _mlp(dim: int, drop_path: float, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, 2 * dim),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(2 * dim, dim),
        DropPath(drop_path),
    )


class MLPBlock(TwoStreamBlock):
    """Y1 = X1 + F(X2); Y2 = X2 + G(Y1), F and G = LayerNorm -> MLP -> dropout/drop path.

    `drop_path` gives F and G a drop path each (independent masks); `shared_drop_path`
    the block's one mask for both (the official RevViT's convention).
    """

    def __init__(
        self,
        dim: int = DIM,
        drop_path: float = 0.0,
        dropout: float = 0.0,
        shared_drop_path: float = 0.0,
    ):
        super().__init__()
        self.F = _mlp(dim, drop_path, dropout)
        self.G = _mlp(dim, drop_path, dropout)
        self.drop_path = shared_drop_path


class BNBlock(TwoStreamBlock):
    """F and G = Linear -> BatchNorm1d -> GELU: a recompute must not update BN twice."""

    def __init__(self, dim: int = DIM):
        super().__init__()
        # No bias before BN: its true gradient is zero, leaving only rounding noise to compare.
        self.F = nn.Sequential(nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.GELU())
        self.G = nn.Sequential(nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.GELU())


class AutocastSpy(nn.Module):
    """Records whether CPU autocast is on each time it runs (forward and recompute)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(torch.is_autocast_enabled("cpu"))
        return x


class SpyBlock(TwoStreamBlock):
    def __init__(self, dim: int = DIM):
        super().__init__()
        self.spy = AutocastSpy()
        self.F = nn.Sequential(self.spy, nn.Linear(dim, dim), nn.GELU())
        self.G = nn.Sequential(nn.Linear(dim, dim), nn.GELU())


def make_stack(depth: int, block=MLPBlock, seed: int = 0, **kwargs) -> ReversibleStack:
    torch.manual_seed(seed)
    return ReversibleStack([block(**kwargs) for _ in range(depth)])


# --------------------------------------------------------------------------- helpers


def rel_err(a: Tensor, b: Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def run_step(
    stack: ReversibleStack,
    mode: str,
    x1: Tensor,
    x2: Tensor | None = None,
    seed: int = 1,
    amp: bool = False,
) -> dict[str, Tensor]:
    """One training step on copies of the inputs; returns outputs and every gradient."""
    stack.mode = mode
    stack.zero_grad(set_to_none=True)
    x1 = x1.detach().clone().requires_grad_()
    x2 = x1 if x2 is None else x2.detach().clone().requires_grad_()
    torch.manual_seed(seed)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with ctx:
        y1, y2 = stack(x1, x2)
        # Weights that are not symmetric in the two streams: a swapped gradient shows.
        loss = (y1.float() * torch.linspace(-1, 1, y1.shape[-1])).sum() + (y2.float() ** 2).sum()
    loss.backward()
    out = {"y1": y1.detach().float(), "y2": y2.detach().float(), "dx1": x1.grad.clone()}
    if x2 is not x1:
        out["dx2"] = x2.grad.clone()
    for name, p in stack.named_parameters():
        out[name] = p.grad.clone()
    return out


def assert_same(got: dict[str, Tensor], want: dict[str, Tensor], tol: float) -> None:
    assert got.keys() == want.keys()
    errs = {k: rel_err(got[k], want[k]) for k in want}
    bad = {k: e for k, e in errs.items() if e > tol}
    assert not bad, f"relative error above {tol}: {bad}"


# ------------------------------------------------------------------ gradient equality


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("drop_path", [0.0, 0.5])
def test_gradients_equal_vanilla(mode: str, depth: int, drop_path: float) -> None:
    stack = make_stack(depth, drop_path=drop_path, dropout=0.2 if drop_path else 0.0)
    stack.train()
    x1, x2 = torch.randn(2, 4, 6, DIM).unbind(0)
    want = run_step(stack, "vanilla", x1, x2)
    got = run_step(stack, mode, x1, x2)
    assert len(want) == 4 + 12 * depth  # outputs, two input grads, all 12 tensors a block
    assert_same(got, want, tol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_leaf_input_fed_to_both_streams_gets_single_gradient(mode: str, depth: int) -> None:
    # RevViT feeds one tensor as X1 and X2. A leaf input must get exactly autograd's
    # gradient: an engine that sets .grad by hand and also returns it doubles it.
    stack = make_stack(depth, drop_path=0.3).train()
    x = torch.randn(4, 6, DIM)
    want = run_step(stack, "vanilla", x)
    got = run_step(stack, mode, x)
    assert_same(got, want, tol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_parameters_get_gradients_when_input_needs_none(mode: str) -> None:
    # A stack fed with plain images (no parameterised stem in front) still trains.
    grads = {}
    for m in ("vanilla", mode):
        stack = make_stack(3, drop_path=0.3).train()
        stack.mode = m
        x = torch.randn(4, 6, DIM)  # requires_grad=False
        torch.manual_seed(1)
        y1, y2 = stack(x, x)
        (y1.sum() + (y2**2).sum()).backward()
        grads[m] = {n: p.grad for n, p in stack.named_parameters()}
    assert len(grads[mode]) == 12 * 3
    assert all(g is not None for g in grads[mode].values())
    assert_same(grads[mode], grads["vanilla"], tol=1e-5)


def test_keep_inputs_gradients_equal_vanilla() -> None:
    for depth in (1, 2, 3):
        stack = make_stack(depth, drop_path=0.5, dropout=0.2).train()
        stack.keep_inputs = True
        x1, x2 = torch.randn(2, 4, 6, DIM).unbind(0)
        want = run_step(stack, "vanilla", x1, x2)
        got = run_step(stack, "reversible", x1, x2)
        assert_same(got, want, tol=1e-5)


def test_gradients_accumulate_like_autograd() -> None:
    # Two backward passes without zero_grad: the engine adds into .grad, never overwrites.
    grads = {}
    for mode in ("vanilla", "reversible"):
        stack = make_stack(2).train()
        stack.mode = mode
        for seed in (3, 4):
            torch.manual_seed(seed)
            x = torch.randn(4, 6, DIM)
            y1, y2 = stack(x, x)
            (y1.sum() + (y2**2).sum()).backward()
        grads[mode] = {n: p.grad for n, p in stack.named_parameters()}
    assert_same(grads["reversible"], grads["vanilla"], tol=1e-5)


# ----------------------------------------------------------------------- randomness


@pytest.mark.parametrize("mode", MODES)
def test_random_masks_replayed_without_touching_global_rng(mode: str) -> None:
    stack = make_stack(3, drop_path=0.5, dropout=0.3).train()
    x1, x2 = torch.randn(2, 8, 6, DIM).unbind(0)
    want = run_step(stack, "vanilla", x1, x2, seed=7)
    state_vanilla = torch.get_rng_state()
    got = run_step(stack, mode, x1, x2, seed=7)
    state_mode = torch.get_rng_state()
    # The masks were drawn (vanilla with drop path differs from the deterministic run)...
    stack.eval()
    assert rel_err(run_step(stack, "vanilla", x1, x2)["y1"], want["y1"]) > 1e-2
    # ...replayed exactly, and the generator ends where vanilla leaves it: no reseeding.
    assert_same(got, want, tol=1e-5)
    assert torch.equal(state_mode, state_vanilla)


@pytest.mark.parametrize("keep_inputs", [False, True])
@pytest.mark.parametrize(
    "drop_path, per_block", [({"drop_path": 0.5}, 2), ({"shared_drop_path": 0.5}, 3)]
)
def test_only_the_reversible_path_snapshots_the_generator(
    monkeypatch: pytest.MonkeyPatch, keep_inputs: bool, drop_path: dict, per_block: int
) -> None:
    # Vanilla is plain autograd and checkpoint replays through torch.utils.checkpoint:
    # neither may take a snapshot it never replays (both used to, for every F and G).
    # The reversible path takes one per sub-function (F, G, and the shared mask's draw),
    # with or without keep_inputs.
    taken = []

    class CountingSnapshot(reversible.RNGSnapshot):
        def __init__(self, tensors):
            taken.append(1)
            super().__init__(tensors)

    monkeypatch.setattr(reversible, "RNGSnapshot", CountingSnapshot)
    stack = make_stack(3, **drop_path).train()
    stack.keep_inputs = keep_inputs
    x1, x2 = torch.randn(2, 4, 6, DIM).unbind(0)
    counts = {}
    for mode in ("vanilla", "checkpoint", "reversible"):
        taken.clear()
        run_step(stack, mode, x1, x2)
        counts[mode] = len(taken)
    assert counts == {"vanilla": 0, "checkpoint": 0, "reversible": per_block * 3}  # 3 blocks


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_shared_drop_path_gradients_equal_vanilla(mode: str, depth: int) -> None:
    # One mask for F and G, redrawn in the recompute; dropout inside F and G on top.
    stack = make_stack(depth, shared_drop_path=0.5, dropout=0.2).train()
    x1, x2 = torch.randn(2, 8, 6, DIM).unbind(0)
    want = run_step(stack, "vanilla", x1, x2, seed=5)
    state_vanilla = torch.get_rng_state()
    got = run_step(stack, mode, x1, x2, seed=5)
    assert_same(got, want, tol=1e-5)
    assert torch.equal(torch.get_rng_state(), state_vanilla)  # replayed, not reseeded
    stack.eval()
    assert rel_err(run_step(stack, "vanilla", x1, x2)["y1"], want["y1"]) > 1e-2  # masks drew


def test_shared_drop_path_keep_inputs_gradients_equal_vanilla() -> None:
    stack = make_stack(3, shared_drop_path=0.5).train()
    stack.keep_inputs = True
    x1, x2 = torch.randn(2, 8, 6, DIM).unbind(0)
    want = run_step(stack, "vanilla", x1, x2, seed=5)
    assert_same(run_step(stack, "reversible", x1, x2, seed=5), want, tol=1e-5)


def test_shared_drop_path_drops_f_and_g_for_the_same_samples() -> None:
    block = make_stack(1, shared_drop_path=0.5)[0].train()
    x1, x2 = torch.randn(2, 64, 6, DIM).unbind(0)
    torch.manual_seed(0)
    with torch.no_grad():
        y1, y2 = block(x1, x2)
    f_dropped = (y1 - x1).flatten(1).abs().amax(1) == 0  # M * F(X2) == 0
    g_dropped = (y2 - x2).flatten(1).abs().amax(1) == 0  # M * G(Y1) == 0
    assert 0 < int(f_dropped.sum()) < 64  # some samples dropped, not all
    assert torch.equal(f_dropped, g_dropped)
    # Kept samples are rescaled by 1 / (1 - p), in F's residual as in G's.
    with torch.no_grad():
        f = block.F(x2)
    torch.testing.assert_close((y1 - x1)[~f_dropped], 2 * f[~f_dropped])


def test_different_seeds_draw_different_masks() -> None:
    # Guards the test above: replay equality means something only if masks vary by seed.
    stack = make_stack(2, drop_path=0.5).train()
    x1, x2 = torch.randn(2, 8, 6, DIM).unbind(0)
    a = run_step(stack, "reversible", x1, x2, seed=1)
    b = run_step(stack, "reversible", x1, x2, seed=2)
    assert rel_err(a["y1"], b["y1"]) > 1e-2


# ------------------------------------------------------------------------ BatchNorm


@pytest.mark.parametrize("mode", MODES)
def test_batchnorm_running_stats_updated_once(mode: str) -> None:
    base = make_stack(3, block=BNBlock).train()
    x1, x2 = torch.randn(2, 16, DIM).unbind(0)
    stacks = {m: copy.deepcopy(base) for m in ("vanilla", mode)}
    results = {m: run_step(stacks[m], m, x1, x2) for m in stacks}
    assert_same(results[mode], results["vanilla"], tol=1e-5)
    buffers = dict(stacks["vanilla"].named_buffers())
    assert any(k.endswith("num_batches_tracked") for k in buffers)
    for name, buf in stacks[mode].named_buffers():
        assert torch.equal(buf, buffers[name]), name
        if name.endswith("num_batches_tracked"):
            assert buf.item() == 1, name
        if name.endswith("running_mean"):
            assert buf.abs().sum() > 0, name  # the forward did update them once


# ------------------------------------------------------------------------- autocast


@pytest.mark.parametrize("mode", MODES)
def test_autocast_replayed_in_recompute(mode: str) -> None:
    stack = make_stack(3, block=SpyBlock).train()
    x1, x2 = torch.randn(2, 4, 6, DIM).unbind(0)
    run_step(stack, mode, x1, x2, amp=True)
    for block in stack:
        # Forward and recompute both ran under bf16 autocast.
        assert block.spy.seen == [True, True]


def test_autocast_gradients_close_to_vanilla_amp(monkeypatch: pytest.MonkeyPatch) -> None:
    stack = make_stack(4, drop_path=0.2).train()
    x1, x2 = torch.randn(2, 4, 6, DIM).unbind(0)
    want = run_step(stack, "vanilla", x1, x2, amp=True)
    got = run_step(stack, "reversible", x1, x2, amp=True)
    replayed = max(rel_err(got[k], want[k]) for k in want)
    # Without the replay the recompute runs in fp32: gradients drift by bf16's precision.
    monkeypatch.setattr(reversible, "_autocast_replayed", lambda state: contextlib.nullcontext())
    drifted = run_step(stack, "reversible", x1, x2, amp=True)
    not_replayed = max(rel_err(drifted[k], want[k]) for k in want)
    assert replayed < 1e-3
    assert not_replayed > 10 * replayed


# ---------------------------------------------------------------- inference and inverse


@pytest.mark.parametrize("guard", [torch.no_grad, torch.inference_mode])
def test_inference_never_takes_custom_path(
    monkeypatch: pytest.MonkeyPatch, guard: type[contextlib.AbstractContextManager]
) -> None:
    calls = []
    apply = reversible._ReversibleFunction.apply

    def spy(*args):
        calls.append(1)
        return apply(*args)

    monkeypatch.setattr(reversible._ReversibleFunction, "apply", spy)
    stack = make_stack(2).train()
    x = torch.randn(4, 6, DIM)
    with guard():
        y_inference = stack(x, x)
    assert calls == []
    y_train = stack(x, x)
    assert calls == [1]  # the spy does see the training path
    for a, b in zip(y_inference, y_train):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("depth", [1, 4])
def test_inverse_of_forward_is_identity(depth: int) -> None:
    stack = make_stack(depth).double().eval()
    x1, x2 = torch.randn(2, 4, 6, DIM, dtype=torch.float64).unbind(0)
    with torch.no_grad():
        r1, r2 = stack.inverse(*stack(x1, x2))
    torch.testing.assert_close(r1, x1, rtol=0, atol=1e-12)
    torch.testing.assert_close(r2, x2, rtol=0, atol=1e-12)
