"""The environment a run records in its manifest: GPU, driver, CUDA, library versions,
commit, host, and the settings that change CUDA memory and speed besides the cell.

torch is imported (timm's version read from its metadata) when the environment is probed,
not with this module: the run store imports it, and reading a run needs neither.
"""

from __future__ import annotations

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


def environment() -> dict:
    """The environment every run records: GPU, driver, CUDA, library versions, commit, host."""
    from importlib import metadata

    import torch  # seconds: when a run's manifest is written, not when records are read

    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "torch": torch.__version__,
        # from its metadata: importing timm (and torchvision under it) takes seconds
        "timm": metadata.version("timm"),
        "revbench": __version__,
        "cuda": torch.version.cuda,
        "git_commit": _git_commit(),
        "cpu_count": os.cpu_count(),
        "gpu": None,
        "gpu_memory_bytes": None,
        "driver": None,
    }
    env.update(cuda_settings())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = props.name
        env["gpu_memory_bytes"] = props.total_memory
        env["driver"] = _nvidia_driver()
    return env


def cuda_settings() -> dict:
    """What changes CUDA memory and speed besides the cell, for the run's manifest."""
    import torch

    settings = {
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "pytorch_cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
    }
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
