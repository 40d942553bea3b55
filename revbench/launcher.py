"""Cell launching: inline (in this process) or isolated (one subprocess per cell).

Isolation gives each cell a clean CUDA allocator, so an out-of-memory cell cannot poison
the next one, and lets a hung cell be killed at its timeout. Whatever happens, the
launcher returns an outcome (status, message, measured values); it never raises for a
failed cell. The batch size is never changed behind the user's back.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .cell import Cell

METHOD_MODULES = {
    "cuda": "revbench.methods.cuda",
    "estimate": "revbench.methods.estimate",
    "cpu": "revbench.methods.cpu",
}


@dataclass
class Outcome:
    status: str  # ok | oom | timeout | error
    message: str = ""
    values: dict = field(default_factory=dict)


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def run_inline(cell: Cell, snapshot_path: Path | None = None) -> Outcome:
    measure = importlib.import_module(METHOD_MODULES[cell.method]).measure
    try:
        values = measure(cell, snapshot_path=snapshot_path)
    except Exception as exc:  # a failed cell becomes a row, never a crash of the run
        status = "oom" if is_oom(exc) else "error"
        if status == "error" and os.environ.get("REVBENCH_DEBUG"):
            traceback.print_exc()
        return Outcome(status, _first_line(exc))
    finally:
        if cell.method == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()
    return Outcome("ok", values=values)


def run_isolated(cell: Cell, snapshot_path: Path | None = None) -> Outcome:
    """Run the cell in a fresh interpreter (`python -m revbench.launcher`), with its timeout."""
    request = {
        "cell": json.loads(cell.to_json()),
        "snapshot_path": snapshot_path and str(snapshot_path),
    }
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "revbench.launcher"],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=cell.timeout_s,
        )
    except subprocess.TimeoutExpired:
        return Outcome("timeout", f"cell exceeded its timeout of {cell.timeout_s:g} s")
    # The worker's last stdout line is its outcome; anything else (a crash, a kill by
    # the kernel's OOM killer) becomes an error row with the tail of its stderr.
    lines = proc.stdout.strip().splitlines()
    if lines:
        try:
            data = json.loads(lines[-1])
            return Outcome(data["status"], data.get("message", ""), data.get("values", {}))
        except (json.JSONDecodeError, KeyError):
            pass
    tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
    status = "oom" if proc.returncode in (-9, 137) else "error"
    return Outcome(status, f"worker exited with code {proc.returncode}: {tail}"[:500])


def _worker() -> None:
    request = json.loads(sys.stdin.read())
    cell = Cell(**request["cell"])
    snapshot = request.get("snapshot_path")
    outcome = run_inline(cell, Path(snapshot) if snapshot else None)
    sys.stdout.write(
        "\n"
        + json.dumps(
            {"status": outcome.status, "message": outcome.message, "values": outcome.values}
        )
        + "\n"
    )


if __name__ == "__main__":
    _worker()
