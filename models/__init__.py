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
    # or tests'); every process, subprocess workers included, imports them here. A plugin
    # that cannot be imported (missing, raising, registering a name already taken) is a
    # one-line UsageError naming it and the cause: exit 2 in the CLI, not a traceback.
    import importlib
    import os

    from revbench.errors import UsageError

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


_load_plugins()
