"""revbench.models: reversible families and their baselines, behind one registry.

    from revbench.models import create, list_models
    model = create("revvit_small", mode="reversible")

Each family lives in its own file and registers its models on import, through
`register_model` (models/_registry.py), as plugins named in REVBENCH_PLUGINS do.
"""

# Importing a family module registers its models.
from . import baselines, bifpn, detection, efficientdet, rev_mvit, revbifpn, revcol, revvit  # noqa: F401
from ._registry import (
    ModelConfig,
    ModelInfo,
    ResolutionError,
    ReversibleConfig,
    UnknownModelError,
    create,
    get_info,
    list_models,
    register_model,
)
from .reversible import MODES, ReversibleBlock, ReversibleModel, ReversibleStack, set_mode

__all__ = [
    "MODES",
    "ModelConfig",
    "ModelInfo",
    "ResolutionError",
    "ReversibleBlock",
    "ReversibleConfig",
    "ReversibleModel",
    "ReversibleStack",
    "UnknownModelError",
    "create",
    "get_info",
    "list_models",
    "register_model",
    "set_mode",
]


def _load_plugins() -> None:
    # REVBENCH_PLUGINS: comma-separated modules that register extra models (your own,
    # or tests'); every process, subprocess workers included, imports them here.
    import importlib
    import os

    for name in filter(
        None, (n.strip() for n in os.environ.get("REVBENCH_PLUGINS", "").split(","))
    ):
        importlib.import_module(name)


_load_plugins()
