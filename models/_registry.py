"""The model registry: one door in (`create`), one listing (`list_models`).

Every model, reversible or baseline, registers an entry point with its metadata and
published figures as data. The harness, the suites, the plots and the tests all read the
registry, so a family that registers here appears everywhere without further changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from torch import nn

KINDS = ("reversible", "baseline")


class UnknownModelError(ValueError):
    """A model name that is not registered."""


class ResolutionError(ValueError):
    """A resolution the model cannot take."""


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model, published figures included."""

    name: str
    family: str  # plot/report grouping: "RevBiFPN", "EfficientNet", ...
    kind: str  # "reversible" or "baseline"
    size: str  # short label within the family: "S0", "B7", "W18", ...
    native_resolution: int
    builder: Callable[..., nn.Module] = field(repr=False, compare=False)
    modes: tuple[str, ...] = ("vanilla",)  # execution modes the model supports
    resolution_multiple: int = 1  # the input side must be a multiple of this
    min_resolution: int = 32
    published_params: int | None = None
    published_macs: int | None = None  # multiply-accumulates at native resolution
    published_top1: float | None = None  # ImageNet-1k top-1, percent
    source: str = ""  # where the published figures come from

    def check_resolution(self, resolution: int) -> None:
        """Raise ResolutionError (one line, naming valid sizes) if the model cannot take it."""
        m = self.resolution_multiple
        if resolution < self.min_resolution or resolution % m:
            lower = max(self.min_resolution, resolution // m * m)
            upper = max(self.min_resolution, -(-resolution // m) * m)
            near = sorted({lower, upper})
            raise ResolutionError(
                f"resolution {resolution} is invalid for {self.name}: it needs a multiple of "
                f"{m} of at least {self.min_resolution}; nearest valid: "
                + " or ".join(str(n) for n in near)
            )

    def as_row(self) -> dict:
        row = dataclasses.asdict(self)
        row.pop("builder")
        row["modes"] = ",".join(self.modes)
        return row


ConfigT = TypeVar("ConfigT")


def configure(base: ConfigT, overrides: dict, *, also_valid: tuple[str, ...] = ()) -> ConfigT:
    """A family's config dataclass `base` with `overrides` applied.

    Unknown keys raise ValueError naming the valid ones (`also_valid`: keys the entry point
    takes itself, such as `pretrained`). Field checks live in the config (`validate()` or
    `__post_init__`), so every family's configs validate themselves the same way.
    """
    valid = [f.name for f in dataclasses.fields(base)]  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown override(s) {', '.join(unknown)} for {type(base).__name__}; "
            f"valid: {', '.join([*valid, *also_valid])}"
        )
    cfg = dataclasses.replace(base, **overrides)  # type: ignore[type-var]
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    *, family: str, kind: str, size: str, native_resolution: int, **info
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register `fn(**overrides) -> nn.Module` under its function name."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is invalid; valid: {', '.join(KINDS)}")

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        add_model(
            ModelInfo(
                name=fn.__name__,
                family=family,
                kind=kind,
                size=size,
                native_resolution=native_resolution,
                builder=fn,
                **info,
            )
        )
        return fn

    return wrap


def add_model(info: ModelInfo) -> None:
    if info.name in _REGISTRY:
        raise ValueError(f"model {info.name!r} is registered twice")
    _REGISTRY[info.name] = info


def _ensure_loaded() -> None:
    # Importing the family modules runs their registrations.
    from revbench import models  # noqa: F401


def list_models(kind: str | None = None, family: str | None = None) -> list[ModelInfo]:
    """Registered models, in registration order, optionally filtered."""
    _ensure_loaded()
    return [
        i
        for i in _REGISTRY.values()
        if (kind is None or i.kind == kind) and (family is None or i.family == family)
    ]


def get_info(name: str) -> ModelInfo:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; valid: {', '.join(_REGISTRY)}") from None


def create(name: str, **overrides) -> nn.Module:
    """Build a registered model: `create("revvit_small", depth=4, embed_dim=64)`.

    `img_size` is understood by every model (baselines that take any size ignore it after
    validation); `mode` by every reversible model.
    """
    info = get_info(name)
    if "img_size" in overrides:
        info.check_resolution(int(overrides["img_size"]))
    if "mode" in overrides and overrides["mode"] not in info.modes:
        raise ValueError(
            f"mode {overrides['mode']!r} is invalid for {name}; valid: {', '.join(info.modes)}"
        )
    model = info.builder(**overrides)
    model.revbench_info = info  # type: ignore[attr-defined]
    return model
