"""RevCol: the inversion path, autocast, intermediate supervision.

The engine guarantees with stored column states (gradients, replay, modes, published
parameter counts and MACs, memory per column) are checked for every size in
tests/test_model_contract.py. Full-size models are built on the meta device; everything
that runs is a tiny RevCol (widths 8-16-32-64, one block per level, 64px).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from revbench.models import ResolutionError, create, get_info, list_models
from revbench.models.revcol import Column, RevCol, RevColOutput, intermediate_supervision_loss

TINY = dict(channels=(8, 16, 32, 64), layers=(1, 1, 1, 1), img_size=64)
NAMES = [i.name for i in list_models(family="RevCol")]


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


# --------------------------------------------------------------------- interface


def test_takes_any_multiple_of_32() -> None:
    model = _tiny(num_columns=2, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 96)).shape == (1, 10)  # built for 64


def test_bad_overrides_raise_value_error() -> None:
    with pytest.raises(ValueError, match="unknown override.*depthh.*valid: channels"):
        create("revcol_tiny", depthh=3)
    with pytest.raises(ValueError, match="channels"):
        create("revcol_tiny", channels=(8, 16, 32))
    with pytest.raises(ValueError, match="num_columns 6 .*multiple of 4"):
        create("revcol_tiny", num_columns=6, intermediate_supervision=True)
    with pytest.raises(ValueError, match="mode 'fast'"):
        create("revcol_tiny", mode="fast")
    with pytest.raises(ResolutionError, match="img_size 100 .*multiple of 32.* 96 or 128"):
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
def test_inversion_gradients_close_to_vanilla(num_columns: int, drop_path: float) -> None:
    """store_columns=False: the inputs are rebuilt by inversion, dividing by alpha once per
    column. Input and every parameter gradient, alpha included, against plain autograd;
    alphas of both signs and layer scale 0.5 so every term counts."""
    model = _tiny(num_columns=num_columns, drop_path=drop_path, store_columns=False)
    images = torch.randn(2, 3, 64, 64)
    model.set_mode("vanilla")
    dx_ref, ref = _grads(model, images)
    # The first column has no state: its alphas are unused; every other alpha learns.
    assert all(ref[f"columns.0.alpha{l}"] is None for l in range(4))
    for i in range(1, num_columns):
        for l in range(4):
            assert ref[f"columns.{i}.alpha{l}"].abs().sum() > 0
    model.set_mode("reversible")
    dx, grads = _grads(model, images)
    assert _rel(dx, dx_ref) < 1e-4
    assert grads.keys() == ref.keys()
    for name, g in ref.items():
        if g is None:
            assert grads[name] is None, name
        else:
            assert _rel(grads[name], g) < 1e-4, (name, _rel(grads[name], g))


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
    checked = {n: _rel(grads[n], g) for n, g in ref.items() if g is not None}
    assert len(checked) > 4 * 3 and max(checked.values()) < 3e-2


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
    for name, g in ref.items():
        assert _rel(rev[name], g) < 1e-5, name
    # Its output is not logits: a classification cell refuses it up front.
    assert get_info("revcol_tiny").task_for({"intermediate_supervision": True}) != "classify"


def test_column_is_one_reversible_block_per_column() -> None:
    model = _tiny(num_columns=3)
    assert [type(b) for b in model.columns] == [Column] * 3
    assert [b.first for b in model.columns] == [True, False, False]
