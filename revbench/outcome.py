"""What launching a cell yields (`Outcome`) and what asks for it (`Request`).

Every launcher, in this process, in a worker, or in a submitit job, answers a request
with an outcome: a status from `revbench.status`, a message, the method's measurement
and, when the request asked for them, the model's counts. A failed cell is an outcome,
never an exception.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .cell import Cell
from .measurement import Counts, Measurement


@dataclass(frozen=True)
class Request:
    """One cell to launch: where its allocator snapshot goes (cuda, --memory-snapshot),
    whether its model is to be counted, and whether counting runs thop."""

    cell: Cell
    snapshot_path: Path | None = None
    counts: bool = False
    thop: bool = True

    def to_json(self) -> str:
        return json.dumps(
            {
                "cell": self.cell.to_json(),
                "snapshot_path": None if self.snapshot_path is None else str(self.snapshot_path),
                "counts": self.counts,
                "thop": self.thop,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Request:
        data = json.loads(text)
        snapshot = data.get("snapshot_path")
        return cls(
            Cell.from_json(data["cell"]),
            Path(snapshot) if snapshot else None,
            bool(data["counts"]),
            bool(data["thop"]),
        )


@dataclass(frozen=True)
class Outcome:
    status: str  # one of revbench.status.STATUSES
    message: str = ""
    measurement: Measurement = Measurement()
    counts: Counts | None = None  # None: not counted by this launch
    cached: bool = False  # answered from the estimate cache, not measured now

    def to_json(self) -> str:
        return json.dumps(
            {
                "status": self.status,
                "message": self.message,
                "measurement": asdict(self.measurement),
                "counts": None if self.counts is None else asdict(self.counts),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Outcome:
        data = json.loads(text)
        counts = data.get("counts")
        return cls(
            data["status"],
            data["message"],
            Measurement(**data["measurement"]),
            None if counts is None else Counts(**counts),
        )


def is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    # CUDA says "out of memory"; the CPU allocator "DefaultCPUAllocator: can't allocate
    # memory: you tried to allocate ...".
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()
