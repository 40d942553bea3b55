"""The model registry: one way to declare a model (`register_model`), one door in (`create`).

A model is a configuration and a builder. The configuration is a frozen dataclass derived
from `ModelConfig`: it knows the model's native resolution (`img_size`), the side multiple
and minimum it takes, its number of classes, its execution modes and the task its output
serves, and it validates itself (family fields, then mode, then resolution, each checked
in `ModelConfig.__post_init__` and nowhere else). The registry restates none of it:
`ModelInfo` reads it off the config, with the overrides of the moment applied. Published
figures come from revbench/data/published.csv (`models/published.py`).

    register_model("revvit_small", RevViTConfig(...), family="RevViT", size="S",
                   builder="revbench.models.revvit:RevViT")
    model = create("revvit_small", depth=4, img_size=64, mode="vanilla")

Nothing here imports torch, and neither do the configs (models/configs/): a builder is
named as "module:attribute" and imported when a model is first built, so reading the
registry (listing models, expanding a suite, keying the estimate cache) costs no torch
import. A builder may also be the callable itself, as your own models' usually are; they
register the same way, from a module named in `REVBENCH_PLUGINS`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from .modes import MODES, check_mode
from .published import PublishedFigure, model_figures
from .registry import Registry, import_ref, is_ref

if TYPE_CHECKING:
    from torch import nn

Overrides = Mapping[str, Any] | Iterable[tuple[str, Any]] | None
ConfigT = TypeVar("ConfigT", bound="ModelConfig")


class UnknownModelError(ValueError):
    """A model name that is not registered."""


class ResolutionError(ValueError):
    """A resolution the model cannot take."""


# ------------------------------------------------------------------------ config checks


def check_side(side: int, multiple: int, minimum: int, what: str) -> None:
    """Raise ResolutionError naming the nearest valid sides unless `side` is a multiple of
    `multiple` and at least `minimum`."""
    if side >= minimum and side % multiple == 0:
        return
    floor = -(-minimum // multiple) * multiple  # the smallest valid side
    below, above = side // multiple * multiple, -(-side // multiple) * multiple
    near = sorted({max(floor, below), max(floor, above)})
    at_least = f" of at least {minimum}" if minimum > multiple else ""
    raise ResolutionError(
        f"{what} {side} is invalid: it needs a multiple of {multiple}{at_least}; "
        f"nearest valid: {' or '.join(map(str, near))}"
    )


def check_positive_ints(cfg: object, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} {value!r} is invalid: it must be a positive int")


def check_rate(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} {value!r} is invalid: it must be in [0, 1)")


# ------------------------------------------------------------------------------ configs


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """What every registered model's configuration provides; families add their fields.

    A config validates itself on construction, and so on every override: `validate()` (the
    family's fields), then the mode, then the resolution against the config's own
    `resolution_multiple` and `min_resolution`.
    """

    img_size: int = 224  # the native resolution, and the side the model is built for
    num_classes: int = 1000
    mode: str = "vanilla"

    modes: ClassVar[tuple[str, ...]] = ("vanilla",)
    # Fields that change only how a training step keeps its tensors, never the weights or
    # the forward's operators: a model's parameter and MAC counts hold for every value
    # (the engine's mode is one; families add theirs).
    memory_only: ClassVar[tuple[str, ...]] = ("mode",)

    @property
    def resolution_multiple(self) -> int:
        """The input side must be a multiple of this."""
        return 1

    @property
    def min_resolution(self) -> int:
        return self.resolution_multiple

    @property
    def task(self) -> str:
        """What the built model's output serves: "classify" is logits (B, num_classes)."""
        return "classify"

    def validate(self) -> None:
        """The family's own field checks; may normalise sequences (TOML lists) to tuples."""

    def __post_init__(self) -> None:
        self.validate()
        check_positive_ints(self, "img_size", "num_classes")
        check_mode(self.mode, self.modes)
        check_side(self.img_size, self.resolution_multiple, self.min_resolution, "img_size")

    def with_overrides(self: ConfigT, overrides: Mapping[str, Any]) -> ConfigT:
        """This config with `overrides` applied; unknown keys raise ValueError naming the
        valid ones (the family's fields first)."""
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            common = [f.name for f in dataclasses.fields(ModelConfig)]
            valid = [n for n in names if n not in common] + common
            raise ValueError(
                f"unknown override(s) {', '.join(unknown)} for {type(self).__name__}; "
                f"valid: {', '.join(valid)}"
            )
        return dataclasses.replace(self, **overrides)


@dataclass(frozen=True, kw_only=True)
class ReversibleConfig(ModelConfig):
    """A config whose model runs in every mode of the reversible engine."""

    mode: str = "reversible"

    modes: ClassVar[tuple[str, ...]] = MODES


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ModelInfo:
    """One registered model: its config and builder; everything else is read off them."""

    name: str
    family: str  # plot/report grouping: "RevBiFPN", "EfficientNet", ...
    size: str  # short label within the family: "S0", "B7", "W18", ...
    config: ModelConfig = field(repr=False)
    # `builder(config) -> nn.Module`, or where to import it from: "package.module:name"
    builder_ref: Callable[[Any], nn.Module] | str = field(repr=False, compare=False)
    pretrained_url: str | None = None  # the published checkpoint, for `pretrained=True`

    @property
    def builder(self) -> Callable[[Any], nn.Module]:
        """The builder, its module imported on first use (torch with it)."""
        return import_ref(self.builder_ref) if is_ref(self.builder_ref) else self.builder_ref

    @property
    def builder_file(self) -> str:
        """The file the builder is defined in, found without importing it ("" where it
        cannot be told). Partials (timm's baselines) name their function."""
        if is_ref(self.builder_ref):
            spec = importlib.util.find_spec(self.builder_ref.partition(":")[0])
            return (spec.origin or "") if spec else ""
        builder = self.builder_ref
        while hasattr(builder, "func"):
            builder = builder.func
        try:
            return inspect.getsourcefile(builder) or ""
        except TypeError:
            return ""

    @property
    def kind(self) -> str:
        """Either "reversible" (runs in every engine mode) or "baseline"."""
        return "reversible" if "reversible" in self.config.modes else "baseline"

    @property
    def modes(self) -> tuple[str, ...]:
        return self.config.modes

    @property
    def native_resolution(self) -> int:
        return self.config.img_size

    @property
    def resolution_multiple(self) -> int:
        return self.config.resolution_multiple

    @property
    def min_resolution(self) -> int:
        return self.config.min_resolution

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def task(self) -> str:
        return self.config.task

    def configure(self, overrides: Overrides = None) -> ModelConfig:
        """The config with `overrides` applied and validated; errors name the model."""
        try:
            return self.config.with_overrides(dict(overrides or {}))
        except ValueError as e:
            raise type(e)(f"{self.name}: {e}") from None

    def check_resolution(self, resolution: int, overrides: Overrides = None) -> None:
        """Raise ResolutionError (one line, naming the nearest valid sides) unless the model,
        with `overrides`, takes `resolution`."""
        self.configure({**dict(overrides or {}), "img_size": resolution})

    def task_for(self, overrides: Overrides = None) -> str:
        """The task the model built with `overrides` serves ("classify", "features", ...)."""
        return self.configure(overrides).task

    # ---- published figures (revbench/data/published.csv, the model's own rows)

    def published(self, metric: str) -> PublishedFigure | None:
        """The published figure for `metric` ("params", "macs", "top1"), if any."""
        return model_figures().get((self.name, metric))

    @property
    def published_params(self) -> int | None:
        figure = self.published("params")
        return None if figure is None else round(figure.value_base)

    @property
    def published_macs(self) -> int | None:
        """Multiply-accumulates at the native resolution."""
        figure = self.published("macs")
        return None if figure is None else round(figure.value_base)

    @property
    def published_top1(self) -> float | None:
        """ImageNet-1k top-1, percent."""
        figure = self.published("top1")
        return None if figure is None else figure.value_base

    @property
    def source(self) -> str:
        """Where the published params, MACs and top-1 come from."""
        figures = [self.published(m) for m in ("params", "macs", "top1")]
        return "; ".join(dict.fromkeys(f.source for f in figures if f is not None))


_MODELS: Registry[ModelInfo] = Registry(
    "model", error=UnknownModelError, unknown="unknown {kind} {name}; valid: {valid}"
)


def register_model(
    name: str,
    config: ModelConfig,
    *,
    family: str,
    size: str,
    builder: Callable[[Any], nn.Module] | str,
    pretrained_url: str | None = None,
) -> ModelInfo:
    """Register `builder(config) -> nn.Module` under `name`.

    `builder` may be the model class; if it has a `load_pretrained(source, check_hash)`
    method, `create(name, pretrained=...)` loads weights with it (`pretrained_url` for True).
    Given as "package.module:name", it is imported when the model is first built.
    """
    if not isinstance(config, ModelConfig):
        raise TypeError(f"{name}: config must be a ModelConfig, not {type(config).__name__}")
    if isinstance(builder, str) and not is_ref(builder):
        raise TypeError(f"{name}: builder {builder!r} is invalid; valid: 'package.module:name'")
    return _MODELS.register(name, ModelInfo(name, family, size, config, builder, pretrained_url))


def register_family(
    family: str,
    variants: Mapping[str, tuple[str, ModelConfig]],
    builder: Callable[[Any], nn.Module] | str | None = None,
    *,
    builder_for: Callable[[str], Callable[[Any], nn.Module] | str] | None = None,
    pretrained_urls: Mapping[str, str] | None = None,
) -> list[ModelInfo]:
    """Register a family's table of `name: (size, config)`, in its order.

    One `builder` builds every size (the family's model class), or `builder_for(name)`
    gives each name its own (timm's models: one builder per timm name). `pretrained_urls`
    maps the names with published weights to them.
    """
    if (builder is None) == (builder_for is None):
        raise TypeError(f"{family}: give either builder or builder_for")
    urls = pretrained_urls or {}
    return [
        register_model(
            name,
            config,
            family=family,
            size=size,
            builder=builder or builder_for(name),  # type: ignore[misc]
            pretrained_url=urls.get(name),
        )
        for name, (size, config) in variants.items()
    ]


def _ensure_loaded() -> None:
    # The family modules and plugins register their models when the package loads them.
    # The package is imported before any of its modules, this one included: no import here.
    sys.modules[__package__].load()


def list_models(kind: str | None = None, family: str | None = None) -> list[ModelInfo]:
    """Registered models, in registration order, optionally filtered."""
    _ensure_loaded()
    return [
        i
        for i in _MODELS
        if (kind is None or i.kind == kind) and (family is None or i.family == family)
    ]


def get_info(name: str) -> ModelInfo:
    _ensure_loaded()
    return _MODELS.get(name)


def create(
    name: str,
    *,
    pretrained: bool | str | os.PathLike = False,
    check_hash: bool = True,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model: `create("revvit_small", depth=4, img_size=64)`.

    Every config field is an override (`img_size`, `num_classes` and `mode` for every
    model). `pretrained=True` loads the published checkpoint, a path or URL that file
    (in any layout the family reads); `check_hash=False` skips the SHA-256 check of a
    file named like a published one (models/hub.py).
    """
    info = get_info(name)
    config = info.configure(overrides)
    if pretrained:
        loads = hasattr(info.builder, "load_pretrained")
        if not loads or (pretrained is True and info.pretrained_url is None):
            with_weights = [i for i in _MODELS if i.pretrained_url]
            # Its own family's first: what the user most likely meant.
            with_weights.sort(key=lambda i: i.family != info.family)
            raise ValueError(
                f"pretrained={pretrained!r} is invalid for {name}: it has "
                + ("no published weights" if loads else "no checkpoint loader")
                + "; models with published weights: "
                + (", ".join(i.name for i in with_weights) or "none")
            )
    model = info.builder(config)
    if pretrained:
        source = info.pretrained_url if pretrained is True else pretrained
        model.load_pretrained(source, check_hash=check_hash)
    return model
