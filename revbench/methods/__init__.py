"""Measurement methods, registered by name: cuda (real), estimate (fake tensors), cpu (real).
`--device` names one of them, or `auto`. Every method's cells run in worker processes under
their timeouts (`revbench.launcher`); cuda asks for a fresh worker per cell.

Importing this package loads no torch: each method's class is imported when the method is
first asked for (`get_method`), and `auto` asks torch for a GPU only where a GPU driver is
present (`revbench.environment.cuda_devices_present`).
"""

from __future__ import annotations

from revbench.models.registry import import_ref

from ..environment import cuda_devices_present
from ..errors import UsageError
from .base import METHODS, Method, get_method, method_names, register_method

__all__ = ["METHODS", "Method", "get_method", "method_names", "register_method", "resolve_device"]

# Registration order is the order --device and error messages list them in.
CLASSES = {
    "cuda": "revbench.methods.cuda:CudaMethod",
    "estimate": "revbench.methods.estimate_method:EstimateMethod",
    "cpu": "revbench.methods.cpu:CpuMethod",
}
for _name, _class in CLASSES.items():
    register_method(_class, _name)


def __getattr__(name: str):
    # PEP 562: the classes are named here too (`from revbench.methods import CpuMethod`),
    # each imported when first asked for, as `get_method` does.
    for where in CLASSES.values():
        if where.endswith(f":{name}"):
            return import_ref(where)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_device(device: str) -> tuple[str, str | None]:
    """The method `--device` names, and a note to print when `auto` falls back."""
    valid = ("auto", *method_names())
    if device not in valid:
        raise UsageError(f"device {device!r} is invalid; valid: {', '.join(valid)}")
    if device == "auto":
        if cuda_devices_present() and get_method("cuda").unavailable() is None:
            return "cuda", None
        return "estimate", "no CUDA GPU found: using the GPU-free estimator (--device estimate)"
    why = get_method(device).unavailable()
    if why:
        usable = [name for name in method_names() if not get_method(name).unavailable()]
        raise UsageError(f"device {device!r} is invalid here: {why}; valid: {', '.join(usable)}")
    return device, None
