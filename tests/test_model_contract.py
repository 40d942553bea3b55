"""The model contract, generated from the registry.

Every registered reversible model, in every mode, against ordinary autograd on the same
weights: gradients of every parameter and the input, random draws replayed without
consuming the generator, BatchNorm statistics moved once, the mode switched on the same
weights, published parameter counts, and activation memory flat in depth (one stored
column state per column for RevCol) on the estimator. Every family's models return logits
over their `num_classes`; overrides that change the output change the model's task.

Each family supplies one entry of FAMILIES: tiny overrides that shrink every registered
size (widths, resolution, classes) while keeping its depth structure (depth, stages,
columns), so each registered model runs its own layout in seconds, in float64, drop path
on; and two depths for the memory check. Sizes whose tiny configs coincide (RevViT S and
B: same depth) are checked once, under all their names. A new family registers, adds one
entry, and gets every check (`test_every_reversible_family_has_an_entry` fails until it
does).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources

import pytest
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from revbench.counting import count_macs, count_params
from revbench.models import MODES, ReversibleStack, create, get_info, list_models
from revbench.models.published import read_published
from revbench.models.reversible import TwoStreamBlock

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class Family:
    tiny: dict  # overrides that make every registered size of the family tiny
    # The memory check: overrides on top of `tiny` (the estimator's cost is per operation,
    # so a larger side costs nothing and puts the peak in the activations) ...
    shallow: dict
    deep: dict  # ... and the same with `added` more reversible blocks (RevCol: columns)
    added: int
    # FlopCounterMode's MACs over the published figure, at the native resolution, for
    # every registered size: (low, high), exclusive. None: counted another way (RevBiFPN's
    # paper counts with thop, checked exactly in tests/test_revbifpn.py).
    macs_ratio: tuple[float, float] | None


FAMILIES: dict[str, Family] = {
    "RevViT": Family(
        tiny=dict(embed_dim=16, num_heads=2, patch_size=8, img_size=16, drop_path_rate=0.3),
        shallow=dict(depth=2, img_size=32),
        deep=dict(depth=5, img_size=32),
        added=3,
        # fvcore (the published figures) also counts LayerNorm, about 0.2% more.
        macs_ratio=(0.99, 1.005),
    ),
    "Rev-MViT": Family(
        # Depth 16, transitions (1, 3, 14) as registered: a 32 px image ends on a 1 x 1 grid.
        tiny=dict(embed_dim=8, num_heads=1, img_size=32, kv_stride=2, drop_path_rate=0.3),
        shallow=dict(depth=6, transitions=(1, 3), img_size=64),  # runs of 1, 1, 2 blocks
        deep=dict(depth=9, transitions=(1, 3), img_size=64),  # runs of 1, 1, 5
        added=3,
        macs_ratio=(0.98, 1.0),  # fvcore's LayerNorms, which FlopCounterMode omits: 0.4%
    ),
    "RevBiFPN": Family(
        tiny=dict(
            channels=(16, 16, 16, 16),
            head_channels=(16, 16, 16, 16),
            fc_features=16,
            img_size=32,
            drop_rate=0.1,
            drop_path_rate=0.3,
        ),
        # Only RevSilos (the per-scale blocks are the two-stream coupling RevViT checks):
        # one more extension stage adds one. Fewer operations keep the estimates short.
        shallow=dict(num_ext_layers=0, blocks_per_stage=0, img_size=64),
        deep=dict(num_ext_layers=1, blocks_per_stage=0, img_size=64),
        added=1,
        macs_ratio=None,
    ),
    "RevCol": Family(
        tiny=dict(channels=(4, 8, 8, 8), img_size=32, drop_path=0.3),
        # From 3 columns on, each adds the same (the first column carries no state).
        shallow=dict(num_columns=3, layers=(1, 1, 1, 1), img_size=64),
        deep=dict(num_columns=4, layers=(1, 1, 1, 1), img_size=64),
        added=1,
        macs_ratio=(0.99, 1.01),  # published to 2-3 significant figures (L: "39G")
    ),
}
NUM_CLASSES = 5
BATCH = 2
MEMORY_BATCH = 8


# ------------------------------------------------------------------ cases, from the registry


def _layouts() -> list[list[str]]:
    """Registered reversible models grouped by their tiny config: one group per layout."""
    groups: dict[object, list[str]] = {}
    for info in _classifiers(kind="reversible"):
        if info.family in FAMILIES:  # else test_every_reversible_family_has_an_entry fails
            groups.setdefault(info.configure(FAMILIES[info.family].tiny), []).append(info.name)
    return list(groups.values())


def _classifiers(kind: str | None = None) -> list:
    # Detectors (task detect/segment) have their own tests: tests/test_detection.py.
    return [i for i in list_models(kind=kind) if i.task == "classify"]


def _first_of_each_family(names: list[str]) -> list[str]:
    firsts: dict[str, str] = {}
    for name in names:
        firsts.setdefault(get_info(name).family, name)
    return list(firsts.values())


def _has_batchnorm(name: str) -> bool:
    with torch.device("meta"):
        model = create(name, **FAMILIES[get_info(name).family].tiny)
    return any(isinstance(m, _BatchNorm) for m in model.modules())


def _shared_drop_path_blocks(model: nn.Module) -> list[TwoStreamBlock]:
    """The two-stream blocks whose F and G share one drop path mask, at a rate above 0."""
    return [m for m in model.modules() if isinstance(m, TwoStreamBlock) and m.drop_path > 0]


def _has_shared_drop_path(name: str) -> bool:
    with torch.device("meta"):
        model = create(name, **FAMILIES[get_info(name).family].tiny)
    return bool(_shared_drop_path_blocks(model))


REVERSIBLE = [info.name for info in _classifiers(kind="reversible")]
LAYOUTS = _layouts()
CHECKED_MODES = [m for m in MODES if m != "vanilla"]
CASES = [(g, mode) for g in LAYOUTS for mode in CHECKED_MODES]
FAMILY_FIRSTS = _first_of_each_family([g[0] for g in LAYOUTS])
WITH_BATCHNORM = {get_info(n).family for n in FAMILY_FIRSTS if _has_batchnorm(n)}
SHARED_DROP_PATH = [n for n in FAMILY_FIRSTS if _has_shared_drop_path(n)]
MACS_CHECKED = [n for n in REVERSIBLE if FAMILIES[get_info(n).family].macs_ratio]
# One model per family: every model of a family is built by the same code.
CLASSIFIERS = _first_of_each_family([i.name for i in _classifiers() if i.family != "Test"])


def by_layout(cases: list[tuple[list[str], str]]) -> list:
    """pytest params (first name, mode), named after every model of the layout."""
    return [pytest.param(g[0], mode, id=f"{'+'.join(g)}-{mode}") for g, mode in cases]


def tiny(name: str, **overrides) -> nn.Module:
    """The registered model shrunk by its family's tiny overrides, float64, weights off
    their init (layer scale 1e-6, zero biases and unit norms would hide terms)."""
    family = FAMILIES[get_info(name).family]
    torch.manual_seed(0)
    model = create(name, num_classes=NUM_CLASSES, **{**family.tiny, **overrides}).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


# ----------------------------------------------------------------------- one step per mode


@dataclass
class Step:
    logits: Tensor
    grads: dict[str, Tensor | None]  # "input" and every parameter
    buffers: dict[str, Tensor]
    rng_after: Tensor  # the CPU generator state after the step


def train_step(model: nn.Module, mode: str, images: Tensor, seed: int = 1) -> Step:
    model.set_mode(mode).train()
    model.zero_grad(set_to_none=True)
    images = images.clone().requires_grad_()
    torch.manual_seed(seed)  # the same drop path masks in every mode
    logits = model(images)
    # Class weights that differ per class: every logit's gradient is distinct.
    (logits * torch.linspace(-1, 2, logits.shape[-1], dtype=logits.dtype)).square().sum().backward()
    return Step(
        logits=logits.detach(),
        grads={"input": images.grad, **{n: p.grad for n, p in model.named_parameters()}},
        buffers={n: b.clone() for n, b in model.named_buffers()},
        rng_after=torch.get_rng_state(),
    )


@functools.cache
def steps(name: str) -> dict[str, Step]:
    """One training step of the same tiny model in each mode, each from the same state,
    and (as "seed 2") a vanilla forward with other masks."""
    model = tiny(name)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    side = model.cfg.img_size
    images = torch.randn(BATCH, 3, side, side, dtype=torch.float64)
    out = {}
    for mode in MODES:
        model.load_state_dict(initial)
        out[mode] = train_step(model, mode, images)
    model.load_state_dict(initial)
    out["seed 2"] = train_step(model, "vanilla", images, seed=2)
    return out


@pytest.mark.parametrize("name, mode", by_layout(CASES))
def test_gradients_equal_vanilla(name: str, mode: str) -> None:
    want, got = steps(name)["vanilla"], steps(name)[mode]
    assert torch.equal(got.logits, want.logits)
    assert got.grads.keys() == want.grads.keys()
    # float64: rounding is out of the way (1e-16 per op); a wrong branch, a missed
    # gradient term or a mask not replayed is off by far more than 1e-9. A gradient that
    # is zero in exact arithmetic (Rev-MViT's key-norm bias: softmax ignores a shift
    # shared by all keys) is measured against a millionth of the largest one instead.
    floor = 1e-6 * max(g.norm().item() for g in want.grads.values() if g is not None)
    errors = {}
    for key, g in want.grads.items():
        assert (got.grads[key] is None) == (g is None), key
        if g is not None:
            errors[key] = (got.grads[key] - g).norm().item() / max(g.norm().item(), floor)
    assert errors["input"] < 1e-9
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-9, (worst, errors[worst])


@pytest.mark.parametrize("name, mode", by_layout(CASES))
def test_random_draws_replayed_without_consuming_the_generator(name: str, mode: str) -> None:
    run = steps(name)
    # The masks are drawn (other seed, other output), so equal gradients above mean they
    # were replayed ...
    assert not torch.equal(run["seed 2"].logits, run["vanilla"].logits)
    # ... and the recompute left the generator where vanilla autograd leaves it.
    assert torch.equal(run[mode].rng_after, run["vanilla"].rng_after)


BN_CASES = [(g, mode) for g, mode in CASES if get_info(g[0]).family in WITH_BATCHNORM]


def test_batchnorm_cases_exist() -> None:
    assert "RevBiFPN" in WITH_BATCHNORM and BN_CASES  # the test below is not vacuous


@pytest.mark.parametrize("name, mode", by_layout(BN_CASES))
def test_batchnorm_statistics_move_once_per_step(name: str, mode: str) -> None:
    want, got = steps(name)["vanilla"], steps(name)[mode]
    bns = [k.removesuffix(".num_batches_tracked") for k in want.buffers if "batches" in k]
    assert bns
    assert got.buffers.keys() == want.buffers.keys()
    for key, buf in want.buffers.items():
        assert torch.equal(got.buffers[key], buf), key  # vanilla's statistics, bit for bit
    for bn in bns:
        assert got.buffers[f"{bn}.num_batches_tracked"].item() == 1, bn  # counted once
        assert got.buffers[f"{bn}.running_mean"].abs().sum() > 0, bn  # and they did move


@pytest.mark.parametrize("name", FAMILY_FIRSTS)
def test_mode_switch_keeps_the_weights(name: str) -> None:
    # The mode is no architecture: the same seed builds the same weights, same names ...
    states = {}
    for mode in ("reversible", "vanilla"):
        torch.manual_seed(0)
        model = create(name, mode=mode, **FAMILIES[get_info(name).family].tiny)
        states[mode] = model.state_dict()
    assert states["reversible"].keys() == states["vanilla"].keys()
    for key, value in states["vanilla"].items():
        assert torch.equal(states["reversible"][key], value), key
    # ... and set_mode reaches every reversible stack (the gradient checks switch one model)
    # and the config, the mode's one home, which `model.mode` reads.
    stacks = [m for m in model.modules() if isinstance(m, ReversibleStack)]
    assert stacks
    for mode in MODES:
        model.set_mode(mode)
        assert model.mode == model.cfg.mode == mode and {s.mode for s in stacks} == {mode}
    with pytest.raises(ValueError, match="mode 'fast' is invalid; valid: reversible, vanilla"):
        model.set_mode("fast")
    assert model.mode == mode and {s.mode for s in stacks} == {mode}  # nothing changed


def test_mode_switch_reaches_a_reversible_trunk_and_stays_in_the_config() -> None:
    # A detector's mode is its RevBiFPN trunk's: one switch moves both configs and the
    # trunk's stacks; a detector on an ordinary trunk has only "vanilla".
    with torch.device("meta"):
        detector = create("faster_rcnn_revbifpn_s0", img_size=64)
        plain = create("faster_rcnn_r50_fpn", img_size=64)
    trunk = detector.detector.backbone.body
    detector.set_mode("checkpoint")
    assert detector.mode == detector.cfg.mode == trunk.mode == trunk.cfg.mode == "checkpoint"
    assert {s.mode for s in trunk.modules() if isinstance(s, ReversibleStack)} == {"checkpoint"}
    with pytest.raises(ValueError, match="mode 'checkpoint' is invalid; valid: vanilla$"):
        plain.set_mode("checkpoint")
    assert plain.set_mode("vanilla").mode == "vanilla"


def test_shared_drop_path_cases_exist() -> None:
    assert {"RevViT", "Rev-MViT"} <= {get_info(n).family for n in SHARED_DROP_PATH}


@pytest.mark.parametrize("name", SHARED_DROP_PATH)
def test_drop_path_one_mask_for_f_and_g(name: str) -> None:
    # The official RevViT and Rev-MViT drop F's and G's residuals of a block for the same
    # samples. The last such block (the highest rate), on 32 samples of its own inputs.
    model = tiny(name).float()
    block = _shared_drop_path_blocks(model)[-1]
    seen = []
    hook = block.register_forward_pre_hook(lambda _, xs: seen.append(xs))
    side = model.cfg.img_size
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, side, side))
    hook.remove()
    x1, x2 = (torch.randn(32, *x.shape[1:]) for x in seen[0])
    torch.manual_seed(0)
    with torch.no_grad():
        y1, y2 = block.train()(x1, x2)
    f_dropped = (y1 - x1).flatten(1).abs().amax(1) == 0
    g_dropped = (y2 - x2).flatten(1).abs().amax(1) == 0
    assert 0 < int(f_dropped.sum()) < 32
    assert torch.equal(f_dropped, g_dropped)


# ------------------------------------------------------------------------ published counts


@pytest.mark.parametrize("name", REVERSIBLE)
def test_parameter_count_is_the_published_one(name: str) -> None:
    figure = get_info(name).published("params")
    assert figure is not None and figure.unit in ("count", "M")
    with torch.device("meta"):
        params = count_params(create(name))
    # Exact where printed exactly; within the printed rounding where rounded ("39.7" M).
    assert abs(params - figure.value_base) <= figure.rounding, (params, figure.printed)


@pytest.mark.parametrize("name", MACS_CHECKED)
def test_macs_match_published(name: str) -> None:
    info = get_info(name)
    low, high = FAMILIES[info.family].macs_ratio
    with torch.device("meta"):
        model = create(name)
    assert low < count_macs(model, info.native_resolution) / info.published_macs < high


def test_published_figures_come_from_one_table(tmp_path) -> None:
    figures = read_published()
    # A paper's figure where one exists: EfficientNet-B0 is Tan & Le's 0.39 GMACs (the
    # registry said 0.40, timm's model card, while the figure used the paper's 0.39).
    b0 = get_info("tf_efficientnet_b0")
    assert b0.published_macs == 390_000_000 and b0.published("macs").source.startswith("Tan")
    # A timm model card is timm counting its own model: marked, and only where nothing
    # independent is published.
    card = [f for f in figures if f.source == "timm model card"]
    assert card and all(f.self_count for f in card)
    assert not any(f.self_count for f in figures if f.source != "timm model card")
    assert get_info("hrnet_w48").published("params").self_count
    # Rounding as printed: "39.7" M is 39.7e6 to within 0.05e6; a count is exact.
    mvit = get_info("rev_mvit_base").published("params")
    assert (mvit.printed, mvit.rounding) == ("39.7", pytest.approx(0.05e6))
    assert get_info("revvit_small").published("params").rounding == 0.5
    # Two rows for one model, task and metric would let two readers disagree.
    path = tmp_path / "published.csv"
    lines = (resources.files("revbench.data") / "published.csv").read_text().splitlines()
    b0_macs = next(x for x in lines if x.startswith("tf_efficientnet_b0,") and ",macs," in x)
    path.write_text("\n".join([*lines, b0_macs.replace("0.39", "0.40")]) + "\n")
    with pytest.raises(ValueError, match="two rows for tf_efficientnet_b0, imagenet, macs"):
        read_published(path)


# ---------------------------------------------------------------------------------- memory


def _activation_bytes(name: str, mode: str, **overrides) -> int:
    from revbench.methods.estimate import estimate_memory

    kwargs = {**FAMILIES[get_info(name).family].tiny, **overrides, "mode": mode}
    est = estimate_memory(
        lambda: create(name, **kwargs), batch_size=MEMORY_BATCH, resolution=kwargs["img_size"]
    )
    return est.activation_bytes


def _column_state_bytes(cfg) -> int:
    """One RevCol column's outputs c0..c3 in fp32, each rounded to CUDA's 512 bytes."""
    sizes = [
        MEMORY_BATCH * c * (cfg.img_size // (4 * 2**level)) ** 2 * 4
        for level, c in enumerate(cfg.channels)
    ]
    return sum(-(-n // 512) * 512 for n in sizes)


# Per family, not per size: `shallow` and `deep` override the depth structure, which is
# all the sizes of a family differ in once `tiny` has shrunk them.
@pytest.mark.parametrize("name", FAMILY_FIRSTS)
def test_activation_memory_flat_in_depth(name: str) -> None:
    """Estimated activations: vanilla grows with every added block (or column); the
    reversible path stores nothing per block, RevCol exactly one column state per column
    (its inputs, for exact gradients) or nothing when rebuilding them by inversion."""
    family = FAMILIES[get_info(name).family]

    def growth(mode: str, **extra) -> int:
        deep = _activation_bytes(name, mode, **family.deep, **extra)
        return deep - _activation_bytes(name, mode, **family.shallow, **extra)

    vanilla = growth("vanilla")
    assert vanilla > 0
    if get_info(name).family == "RevCol":
        cfg = get_info(name).configure({**family.tiny, **family.deep})
        state = _column_state_bytes(cfg)
        assert growth("reversible") == family.added * state
        assert growth("reversible", store_columns=False) == 0
        assert vanilla > 4 * family.added * state
    else:
        assert growth("reversible") == 0


# ----------------------------------------------------------------- every registered model


def test_every_reversible_family_has_an_entry() -> None:
    families = {get_info(n).family for n in REVERSIBLE}
    assert families, "no reversible model registered"
    assert families <= set(FAMILIES), f"add tiny overrides for {families - set(FAMILIES)}"


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_returns_logits_over_num_classes(name: str) -> None:
    info = get_info(name)
    assert info.task == "classify"
    if info.kind == "reversible":
        model = tiny(name).float()
        side = model.cfg.img_size
    else:  # baselines at their smallest side, on the meta device: shapes only
        side = info.min_resolution
        with torch.device("meta"):
            model = create(name, img_size=side, num_classes=NUM_CLASSES)
    assert model.num_classes == NUM_CLASSES
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        logits = model.eval()(torch.zeros(BATCH, 3, side, side, device=device, dtype=dtype))
    assert logits.shape == (BATCH, NUM_CLASSES)


@pytest.mark.parametrize(
    "name, overrides, task",
    [
        ("revbifpn_s0", {}, "classify"),
        ("revbifpn_s0", {"features_only": True}, "features"),
        ("revbifpn_s0", {"features_only": "stack"}, "features"),
        ("revcol_tiny", {"intermediate_supervision": True}, "intermediate_supervision"),
        ("revvit_small", {"depth": 2}, "classify"),
    ],
)
def test_overrides_that_change_the_output_change_the_task(name, overrides, task) -> None:
    assert get_info(name).task == "classify"
    assert get_info(name).task_for(overrides) == task


def test_registry_keeps_order_refuses_twice_and_names_the_valid_ones() -> None:
    from revbench.models import Registry, UnknownModelError

    things: Registry[int] = Registry("thing", error=LookupError)
    things.register("b", 2)
    things.register("a", 1)
    assert things.names() == ("b", "a") and list(things) == [2, 1] and len(things) == 2
    with pytest.raises(ValueError, match="^thing 'a' is registered twice$"):
        things.register("a", 3)
    with pytest.raises(LookupError, match="^thing 'c' is invalid; valid: b, a$"):
        things.get("c")
    assert things.get("c", None) is None and "c" not in things
    with pytest.raises(LookupError, match="'c' is not registered"):
        things["c"] = 3  # swapping is for registered entries only
    things["a"] = 4
    assert things["a"] == 4
    # The model registry's own wording, as before it was one of these.
    with pytest.raises(UnknownModelError, match="^unknown model 'revvit'; valid: tf_eff"):
        get_info("revvit")


def test_reading_the_registry_and_expanding_a_suite_import_no_torch() -> None:
    # Configs are torch-free (models/configs/), builders named by module: listing models,
    # resolving and checking a config and expanding the main suite load no torch (plugins
    # off: the tests' own define their networks beside their configs).
    script = (
        "import sys\n"
        "from revbench.models import get_info, list_models\n"
        "from revbench.methods import get_method, resolve_device\n"
        "from revbench.suite import expand, load_suite\n"
        "assert len(list_models()) > 60\n"
        "get_info('revbifpn_s3').check_resolution(320, {'recompute_neck': False})\n"
        "cells = expand(load_suite('imagenet-train-mem'), method='estimate')\n"
        "assert get_method('estimate').batches_share_work\n"
        "print(len(cells), sorted(m for m in ('torch', 'timm', 'pandas') if m in sys.modules))\n"
    )
    env = {**os.environ, "REVBENCH_PLUGINS": ""}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split(maxsplit=1)[1].strip() == "[]"


def test_a_builder_is_imported_when_a_model_is_built() -> None:
    from revbench.models import register_model
    from revbench.models.revvit import RevViT

    info = get_info("revvit_small")
    assert info.builder_ref == "revbench.models.revvit:RevViT" and info.builder is RevViT
    assert info.builder_file.endswith("models/revvit.py")
    assert get_info("resnet50").builder_file.endswith("models/baselines.py")  # a partial
    with pytest.raises(TypeError, match="builder 'revvit.RevViT' is invalid; valid:"):
        register_model("x", info.config, family="X", size="X", builder="revvit.RevViT")
