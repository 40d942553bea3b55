"""Memory budgets and margins as users write them: '16GiB', '24GB', bytes, or 'auto' (the
GPU's free memory), for `revbench run --budget` and `revbench max-batch`."""

from __future__ import annotations

import math
import re
import subprocess
import sys

from .errors import UsageError

_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)")
_VALID_BUDGETS = "a size such as 16GiB, 24GB or 17179869184 (bytes; units B, kB, MB, GB, TB, "
_VALID_BUDGETS += "KiB, MiB, GiB, TiB), or auto"


def parse_budget(text: str) -> int | None:
    """Bytes of a budget: '16GiB' -> 16 * 2**30, '16GB' -> 16 * 10**9, '1000' -> 1000;
    None for 'auto' (resolved on the GPU by `auto_budget`). ValueError on anything else."""
    value = str(text).strip().lower()
    if value == "auto":
        return None
    m = _SIZE.fullmatch(value)
    if not m or m.group(2) not in ("", *_UNITS):
        raise ValueError(f"budget {text!r} is invalid; valid: {_VALID_BUDGETS}")
    nbytes = round(float(m.group(1)) * _UNITS[m.group(2) or "b"])
    if nbytes < 1:
        raise ValueError(f"budget {text!r} is invalid: it must be at least one byte")
    return nbytes


def parse_margin(text: str) -> float:
    """'5%' or '0.05' -> 0.05: the fraction of a budget held back, in [0, 1)."""
    value = str(text).strip()
    try:
        margin = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        margin = math.nan
    if not 0.0 <= margin < 1.0:
        raise ValueError(
            f"margin {text!r} is invalid; valid: a percentage below 100 (5%) or a fraction "
            "below 1 (0.05)"
        )
    return margin


_AUTO_PROBE = (
    "import torch; torch.empty(0, device='cuda'); "
    "free, total = torch.cuda.mem_get_info(); print(free, total)"
)


def auto_budget() -> int:
    """What a fresh process can allocate on GPU 0: the card's total memory less its CUDA
    context (and less anything other processes hold). Read in a child process, so this
    one holds no context the cells would have to share the card with."""
    import torch

    if not torch.cuda.is_available():
        raise UsageError(
            "budget 'auto' needs a CUDA GPU and none is visible; give a size, e.g. 16GiB"
        )
    out = subprocess.run(
        [sys.executable, "-c", _AUTO_PROBE], capture_output=True, text=True, timeout=300
    )
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-1:] or [""]
        raise UsageError(f"budget 'auto': could not read the GPU's free memory: {tail[0]}")
    free, _total = map(int, out.stdout.split())
    return free


def resolve_budgets(texts: list[str], where: str = "--budget") -> list[int]:
    """Budgets in bytes, in the order given, `auto` read off the GPU; UsageError naming
    `where` on a bad one."""
    out = []
    for text in texts:
        try:
            nbytes = parse_budget(text)
        except ValueError as e:
            raise UsageError(f"{where}: {e}") from None
        out.append(auto_budget() if nbytes is None else nbytes)
    return list(dict.fromkeys(out))
