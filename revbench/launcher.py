"""Cell launching: inline (in this process) or isolated (one subprocess per cell).

Isolation gives each cell a clean CUDA allocator, so an out-of-memory cell cannot poison
the next one, and lets a hung cell be killed at its timeout. Whatever happens, the
launcher returns an outcome (status, message, measurement); it never raises for a failed
cell. The batch size is never changed behind the user's back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import status
from .cell import Cell
from .measurement import Measurement
from .methods import get_method


@dataclass(frozen=True)
class Outcome:
    status: str  # one of revbench.status.STATUSES
    message: str = ""
    measurement: Measurement = Measurement()

    def to_json(self) -> str:
        data = {"status": self.status, "message": self.message}
        return json.dumps({**data, "measurement": asdict(self.measurement)})

    @classmethod
    def from_json(cls, text: str) -> Outcome:
        data = json.loads(text)
        return cls(data["status"], data["message"], Measurement(**data["measurement"]))


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def run_inline(cell: Cell, snapshot_path: Path | None = None) -> Outcome:
    method = get_method(cell.method)
    try:
        measurement = method.measure(cell, snapshot_path)
    except Exception as exc:  # a failed cell becomes a row, never a crash of the run
        failed = status.OOM if is_oom(exc) else status.ERROR
        if failed == status.ERROR and os.environ.get("REVBENCH_DEBUG"):
            traceback.print_exc()
        return Outcome(failed, _first_line(exc))
    finally:
        method.cleanup()
    return Outcome(status.OK, measurement=measurement)


def run_isolated(cell: Cell, snapshot_path: Path | None = None) -> Outcome:
    """Run the cell in a fresh interpreter (`python -m revbench.launcher`), with its timeout."""
    request = {"cell": cell.to_json(), "snapshot_path": snapshot_path and str(snapshot_path)}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "revbench.launcher"],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=cell.timeout_s,
        )
    except subprocess.TimeoutExpired:
        return Outcome(status.TIMEOUT, f"cell exceeded its timeout of {cell.timeout_s:g} s")
    # The worker's last stdout line is its outcome; anything else (a crash, a kill by
    # the kernel's OOM killer) becomes a row with the tail of its stderr.
    lines = proc.stdout.strip().splitlines()
    if lines:
        try:
            return Outcome.from_json(lines[-1])
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
    failed = status.OOM if proc.returncode in (-9, 137) else status.ERROR
    return Outcome(failed, f"worker exited with code {proc.returncode}: {tail}"[:500])


def _worker() -> None:
    request = json.loads(sys.stdin.read())
    snapshot = request.get("snapshot_path")
    outcome = run_inline(Cell.from_json(request["cell"]), Path(snapshot) if snapshot else None)
    sys.stdout.write("\n" + outcome.to_json() + "\n")


if __name__ == "__main__":
    _worker()
