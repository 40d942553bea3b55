"""The environment a run records in its manifest: GPU, driver, CUDA, library versions,
commit, host, and the settings that change CUDA memory and speed besides the cell.

torch is imported only where there may be a GPU to describe (`cuda_devices_present`) or
it is loaded already: torch's and CUDA's versions are read from torch's own version file
(`torch_build`), timm's from its metadata. A run whose cells all come from the estimate
cache loads no torch for its manifest, and reading a run needs none.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

from . import __version__

NVML_MISSING = (
    "nvidia-ml-py is not installed (pip install revbench[gpu]): process memory not measured"
)


# What a machine with a GPU torch can use has: NVIDIA's driver (its device nodes, which
# CUDA may create only on first use, and its /proc entry), WSL2's GPU paravirtualisation,
# and ROCm's kernel driver (torch.cuda serves AMD GPUs in ROCm builds).
GPU_DRIVER_PATHS = ("/dev/nvidia[0-9]*", "/proc/driver/nvidia", "/dev/dxg", "/dev/kfd")


def cuda_devices_present() -> bool:
    """False where torch can find no GPU for certain, told without importing it (1.5 s):
    a Linux machine without any of `GPU_DRIVER_PATHS`. True elsewhere: ask torch."""
    if not sys.platform.startswith("linux"):
        return True
    return any(glob.glob(pattern) for pattern in GPU_DRIVER_PATHS)


@functools.cache
def torch_build() -> dict[str, str | None]:
    """The installed torch's version and the CUDA it was built with, as `torch.__version__`
    and `torch.version.cuda` give them, from torch's own version file, loaded alone (torch
    itself takes 1.5 s to import); from torch where it is loaded or the file is not there."""
    torch = sys.modules.get("torch")
    if torch is None:
        spec = importlib.util.find_spec("torch")
        locations = spec.submodule_search_locations if spec else None
        path = Path(locations[0]) / "version.py" if locations else None
        if path is not None and path.is_file():
            version_spec = importlib.util.spec_from_file_location("_revbench_torch_version", path)
            version = importlib.util.module_from_spec(version_spec)
            version_spec.loader.exec_module(version)
            return {"torch": str(version.__version__), "cuda": version.cuda}
        import torch
    return {"torch": str(torch.__version__), "cuda": torch.version.cuda}


def environment() -> dict:
    """The environment every run records: GPU, driver, CUDA, library versions, commit, host."""
    from importlib import metadata

    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "torch": torch_build()["torch"],
        # from its metadata: importing timm (and torchvision under it) takes seconds
        "timm": metadata.version("timm"),
        "revbench": __version__,
        "cuda": torch_build()["cuda"],
        "git_commit": _git_commit(),
        "cpu_count": os.cpu_count(),
        "gpu": None,
        "gpu_memory_bytes": None,
        "driver": None,
    }
    env.update(cuda_settings())
    if not cuda_devices_present():
        return env
    import torch  # seconds: only where there may be a GPU to describe

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = props.name
        env["gpu_memory_bytes"] = props.total_memory
        env["driver"] = _nvidia_driver()
    return env


def cuda_settings() -> dict:
    """What changes CUDA memory and speed besides the cell, for the run's manifest. torch's
    own switches are read where torch is loaded or a GPU may be present; elsewhere (an
    estimator run, whose figures they do not change) they are None."""
    settings = {
        "cudnn_benchmark": None,
        "cudnn_deterministic": None,
        "tf32_matmul": None,
        "tf32_cudnn": None,
        "float32_matmul_precision": None,
        "pytorch_cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
    }
    if "torch" in sys.modules or cuda_devices_present():
        import torch  # seconds: only where its switches can matter

        settings.update(
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            cudnn_deterministic=torch.backends.cudnn.deterministic,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
            float32_matmul_precision=torch.get_float32_matmul_precision(),
        )
    try:
        import pynvml  # noqa: F401

        settings["nvml"] = "nvidia-ml-py installed"
    except ImportError:
        settings["nvml"] = NVML_MISSING
    return settings


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip().splitlines()[0] or None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None
