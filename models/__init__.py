"""revbench.models: reversible families and their baselines, behind one registry.

    from revbench.models import create, list_models
    model = create("revvit_small", mode="reversible")

Each family's network lives in its own file (models/revvit.py); its config, published
sizes and registration, through `register_family` (models/_registry.py), in its twin under
models/configs/, which imports no torch. Plugins named in REVBENCH_PLUGINS register through
`register_model`.

Importing the package itself is light (no torch): it is the bottom layer, and the harness
takes its `UsageError` from here, also where a command must answer at once (`--help`).
The families' configs and the plugins are imported on first use of the registry: the first
name taken from this package, or the first `list_models`, `get_info` or `create`. Reading
the registry imports no torch; building a model imports its network (and torch) then.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from .errors import UsageError

# Importing a family's config module registers its models; this is their registration
# order (RevViT before Rev-MViT, which builds on it). timm's baselines are one torch-free
# file (no network of their own).
FAMILY_MODULES = (
    "baselines",
    "bifpn",
    "detection",
    "efficientdet",
    "revvit",
    "rev_mvit",
    "revbifpn",
    "revcol",
)

# The package's names: where each is defined.
_DEFINED_IN = {
    **dict.fromkeys(
        (
            "ModelConfig",
            "ModelInfo",
            "ResolutionError",
            "ReversibleConfig",
            "UnknownModelError",
            "create",
            "get_info",
            "list_models",
            "register_family",
            "register_model",
        ),
        "_registry",
    ),
    **dict.fromkeys(
        ("ReversibleBlock", "ReversibleModel", "ReversibleStack", "set_mode"), "reversible"
    ),
    "MODES": "modes",  # read by suite expansion: without torch
    "Registry": "registry",
}

__all__ = sorted([*_DEFINED_IN, "UsageError", "load"])

_loaded = False


def load() -> None:
    """Import every family module and every plugin, once (the registry calls it)."""
    global _loaded
    if _loaded:
        return
    # Set first: the families and plugins import this package back while they load.
    _loaded = True
    try:
        for family in FAMILY_MODULES:
            importlib.import_module(_config_module(family))
        _load_plugins()
    except BaseException:
        _loaded = False  # the next use tries again, and fails again with the same line
        raise


def __getattr__(name: str) -> Any:
    # PEP 562: called for names not yet in the package, so a name is looked up once.
    if name in _DEFINED_IN:
        load()
        value = getattr(importlib.import_module(f"{__name__}.{_DEFINED_IN[name]}"), name)
    elif name in FAMILY_MODULES:
        load()
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def _config_module(family: str) -> str:
    """Where `family` registers its models: models/configs/<family>.py, or baselines.py."""
    return f"{__name__}.{family}" if family == "baselines" else f"{__name__}.configs.{family}"


def _load_plugins() -> None:
    # REVBENCH_PLUGINS: comma-separated modules that register extra models (your own,
    # or tests'); every process, subprocess workers included, imports them here. A plugin
    # that cannot be imported (missing, raising, registering a name already taken) is a
    # one-line UsageError naming it and the cause: exit 2 in the CLI, not a traceback.
    for name in filter(
        None, (n.strip() for n in os.environ.get("REVBENCH_PLUGINS", "").split(","))
    ):
        try:
            importlib.import_module(name)
        except Exception as e:
            lines = str(e).strip().splitlines()
            cause = f"{type(e).__name__}: {lines[0] if lines else ''}".strip()
            missing = (
                isinstance(e, ModuleNotFoundError)
                and e.name
                and (name == e.name or name.startswith(e.name + "."))
            )
            what = "cannot be found" if missing else "failed on import"
            raise UsageError(f"REVBENCH_PLUGINS: plugin {name!r} {what} ({cause})") from None
