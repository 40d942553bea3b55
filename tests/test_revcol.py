"""RevCol: exact published sizes, the column engine against ordinary autograd, memory.

Full-size models are checked on the meta device (no memory). Everything that runs is a
tiny RevCol (widths 8-16-32-64, one block per level, 64px) so the file runs in seconds.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from revbench.models import ResolutionError, create, get_info, list_models
from revbench.models.revcol import (
    CONFIGS,
    Column,
    RevCol,
    RevColOutput,
    intermediate_supervision_loss,
)

TINY = dict(channels=(8, 16, 32, 64), layers=(1, 1, 1, 1), img_size=64)
PUBLISHED = {  # exact parameter counts; MACs as published (T 4.5G, S 9.0G, B 16.6G, L 39G)
    "revcol_tiny": 30_456_168,
    "revcol_small": 60_568_424,
    "revcol_base": 138_616_408,
    "revcol_large": 273_095_400,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(seed: int = 0, **overrides) -> RevCol:
    """A tiny RevCol with weights far from init: layer scale 0.5 (1e-6 would hide the
    blocks' contribution) and alphas of both signs, 0.4 <= |alpha| <= 0.9."""
    torch.manual_seed(seed)
    model = create("revcol_tiny", **{**TINY, **overrides})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.fill_(0.5)
            elif ".alpha" in name:
                sign = torch.where(torch.rand_like(p) < 0.3, -1.0, 1.0)
                p.copy_(sign * torch.empty_like(p).uniform_(0.4, 0.9))
    return model


def _grads(model: RevCol, images: Tensor, amp: bool = False) -> tuple[Tensor, dict]:
    torch.manual_seed(1234)  # the same drop path masks in every mode
    model.zero_grad(set_to_none=True)
    images = images.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        logits = model(images)
    # Squared logits: every class contributes, unlike a loss saturating on one label.
    logits.float().square().sum().backward()
    return images.grad, {n: p.grad for n, p in model.named_parameters()}


def _rel(a: Tensor, b: Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_parameter_count_is_exact(name: str) -> None:
    with torch.device("meta"):
        model = create(name)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]
    assert get_info(name).published_params == PUBLISHED[name]


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_macs_match_published(name: str) -> None:
    from revbench.counting import count_macs

    with torch.device("meta"):
        model = create(name)
    published = get_info(name).published_macs
    # Published to 2-3 significant figures (L: "39G").
    assert abs(count_macs(model, 224) - published) / published < 0.01


def test_registry_entries() -> None:
    infos = list_models(family="RevCol")
    assert [i.name for i in infos] == list(CONFIGS)
    assert [i.size for i in infos] == ["T", "S", "B", "L"]
    for info in infos:
        assert info.kind == "reversible" and info.native_resolution == 224
        assert info.resolution_multiple == 32
        assert info.modes == ("reversible", "vanilla", "checkpoint")


# --------------------------------------------------------------------- interface


@pytest.mark.parametrize("mode", ["reversible", "vanilla", "checkpoint"])
def test_forward_shape(mode: str) -> None:
    model = _tiny(num_columns=2, num_classes=10, mode=mode)
    images = torch.randn(2, 3, 64, 64)
    assert model(images).shape == (2, 10)  # training path
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 96, 96)).shape == (1, 10)  # any multiple of 32


def test_bad_overrides_raise_value_error() -> None:
    with pytest.raises(ValueError, match="unknown override.*depthh.*valid: channels"):
        create("revcol_tiny", depthh=3)
    with pytest.raises(ValueError, match="channels"):
        create("revcol_tiny", channels=(8, 16, 32))
    with pytest.raises(ValueError, match="num_columns 6 .*multiple of 4"):
        create("revcol_tiny", num_columns=6, intermediate_supervision=True)
    with pytest.raises(ValueError, match="mode 'fast'"):
        create("revcol_tiny", mode="fast")
    with pytest.raises(ResolutionError, match="multiple of 32"):
        create("revcol_tiny", img_size=100)


def test_alpha_clamp_keeps_sign() -> None:
    model = _tiny(num_columns=2)
    alpha = model.columns[1].alpha0
    with torch.no_grad():
        alpha[0, :3] = torch.tensor([1e-5, -1e-5, 0.0]).view(3, 1, 1)
    rest = alpha[0, 3:].clone()
    model(torch.randn(1, 3, 64, 64))
    assert alpha[0, :3].flatten().tolist() == pytest.approx([1e-3, -1e-3, 1e-3])
    assert torch.equal(alpha[0, 3:], rest)  # |alpha| >= 1e-3 already: untouched


# ------------------------------------------------------------------ the engine


@pytest.mark.parametrize("num_columns", [2, 3])
@pytest.mark.parametrize("drop_path", [0.0, 0.3])
@pytest.mark.parametrize("store_columns", [True, False])
def test_gradients_equal_vanilla(num_columns: int, drop_path: float, store_columns: bool) -> None:
    """Input and every parameter gradient, alpha included, in reversible and checkpoint
    mode against plain autograd on the same weights."""
    model = _tiny(num_columns=num_columns, drop_path=drop_path, store_columns=store_columns)
    images = torch.randn(2, 3, 64, 64)
    model.set_mode("vanilla")
    dx_ref, ref = _grads(model, images)
    # The first column has no state: its alphas are unused; every other alpha learns.
    assert all(ref[f"columns.0.alpha{l}"] is None for l in range(4))
    for i in range(1, num_columns):
        for l in range(4):
            assert ref[f"columns.{i}.alpha{l}"].abs().sum() > 0
    # Stored inputs are exact (rounding only); inversion divides by alpha once per column.
    tol = 1e-5 if store_columns else 1e-4
    for mode in ("reversible", "checkpoint"):
        model.set_mode(mode)
        dx, grads = _grads(model, images)
        assert _rel(dx, dx_ref) < tol, mode
        for name, g in ref.items():
            if g is None:
                assert grads[name] is None, (mode, name)
            else:
                assert grads[name] is not None, (mode, name)
                assert _rel(grads[name], g) < tol, (mode, name, _rel(grads[name], g))


def test_drop_path_masks_replayed() -> None:
    model = _tiny(num_columns=3, drop_path=0.6, store_columns=True)
    images = torch.randn(8, 3, 64, 64)
    with torch.no_grad():
        torch.manual_seed(1234)
        train_out = model.train()(images)
        eval_out = model.eval()(images)
    model.train()
    assert not torch.allclose(train_out, eval_out)  # masks do drop samples
    model.set_mode("vanilla")
    dx_ref, ref = _grads(model, images)
    for store_columns in (True, False):
        model.columns.keep_inputs = store_columns
        model.set_mode("reversible")
        dx, grads = _grads(model, images)
        assert _rel(dx, dx_ref) < 1e-4
        assert all(_rel(grads[n], g) < 1e-4 for n, g in ref.items() if g is not None)


def test_autocast_replayed_in_recompute() -> None:
    model = _tiny(num_columns=3)
    images = torch.randn(2, 3, 64, 64)
    model.set_mode("vanilla")
    dx_ref, ref = _grads(model, images, amp=True)
    dtypes: list[torch.dtype] = []
    fc = model.columns[-1].level0.blocks[0].pwconv1
    handle = fc.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    model.set_mode("reversible")
    dx, grads = _grads(model, images, amp=True)
    handle.remove()
    assert dtypes == [torch.bfloat16, torch.bfloat16]  # the forward, then the recompute
    # bf16 sums gradients in a different order per mode: bf16-level agreement.
    assert _rel(dx, dx_ref) < 2e-2
    assert all(_rel(grads[n], g) < 3e-2 for n, g in ref.items() if g is not None)


def test_inverse_rebuilds_inputs_and_error_grows_per_column() -> None:
    """One column back the inverse is exact to fp32 rounding; walking many columns back
    the error grows (x 1/|alpha| and more per column): why inputs are stored by default."""
    torch.manual_seed(0)
    model = create("revcol_tiny", **TINY, num_columns=10, drop_path=0.0).eval()
    columns = list(model.columns)
    with torch.no_grad():
        states = [(model.stem(torch.randn(2, 3, 64, 64)),)]
        for column in columns:
            states.append(column(*states[-1]))
        assert columns[0].inverse(*states[1])[0] is states[0][0]  # the first: x only
        errors, state = [], states[-1]
        for i in range(len(columns) - 1, 0, -1):
            state = columns[i].inverse(*state)
            assert state[0] is states[i][0]  # x passes through untouched
            errors.append(max(_rel(a, b) for a, b in zip(state[1:], states[i][1:])))
    assert errors[0] < 1e-5
    assert errors[-1] > 100 * errors[0]


# ------------------------------------------------------------------------ memory


def _state_bytes(batch: int, res: int, channels: tuple[int, ...]) -> int:
    """One column's outputs c0..c3 in fp32, each rounded to the allocator's 512 bytes."""
    sizes = [batch * c * (res // (4 * 2**l)) ** 2 * 4 for l, c in enumerate(channels)]
    return sum(-(-n // 512) * 512 for n in sizes)


def test_memory_per_added_column() -> None:
    """Estimated activation memory: reversible grows by at most one column state per added
    column (its stored inputs), inversion not at all, vanilla by a column's activations."""
    from revbench.methods.estimate import estimate_memory

    def activations(num_columns: int, **kw) -> int:
        est = estimate_memory(
            "revcol_tiny",
            batch_size=2,
            resolution=64,
            num_columns=num_columns,
            channels=TINY["channels"],
            layers=TINY["layers"],
            **kw,
        )
        return est.activation_bytes

    state = _state_bytes(2, 64, TINY["channels"])
    reversible = activations(3, mode="reversible") - activations(2, mode="reversible")
    inversion = activations(3, mode="reversible", store_columns=False) - activations(
        2, mode="reversible", store_columns=False
    )
    vanilla = activations(3, mode="vanilla") - activations(2, mode="vanilla")
    assert 0 <= reversible <= state
    assert inversion <= state // 4
    assert vanilla >= 4 * state


# ------------------------------------------------------- intermediate supervision


def test_intermediate_supervision_outputs_and_gradients() -> None:
    model = _tiny(num_columns=4, num_classes=10, intermediate_supervision=True)
    assert sum(p.numel() for p in model.parameters()) > sum(
        p.numel() for p in _tiny(num_columns=4, num_classes=10).parameters()
    )
    images = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([1, 7])
    out = model(images)
    assert isinstance(out, RevColOutput) and out.logits.shape == (2, 10)
    assert [t.shape for t in out.aux_logits] == [(2, 10)] * 3
    assert [t.shape for t in out.reconstructions] == [(2, 3, 64, 64)] * 3
    with torch.no_grad():
        assert model.eval()(images).shape == (2, 10)  # eval: the final logits only
    model.train()

    def grads(mode: str) -> dict:
        model.set_mode(mode)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        intermediate_supervision_loss(model(images), images, targets).backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    ref = grads("vanilla")
    assert any(n.startswith("decoders.") for n in ref) and any(n.startswith("aux_") for n in ref)
    rev = grads("reversible")
    assert rev.keys() == ref.keys()
    assert all(_rel(rev[n], g) < 1e-5 for n, g in ref.items())


def test_column_is_one_reversible_block_per_column() -> None:
    model = _tiny(num_columns=3)
    assert [type(b) for b in model.columns] == [Column] * 3
    assert [b.first for b in model.columns] == [True, False, False]
