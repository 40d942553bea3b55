"""`python -m revbench.allocator SNAPSHOT`: a recorded memory snapshot replayed through the
caching-allocator model, simulated vs real reserved memory.

The model is `revbench.caching_allocator`, snapshot reading and writing
`revbench.memory_snapshot`, and the recorder of steps on CPU or fake tensors
`revbench.methods.recorder`.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

from .memory_snapshot import compare_snapshot


def main(argv: list[str] | None = None) -> int:
    """`python -m revbench.allocator SNAPSHOT`: replay a snapshot, simulated vs real."""
    parser = argparse.ArgumentParser(
        prog="python -m revbench.allocator",
        description="Replay a PyTorch memory snapshot (revbench run --memory-snapshot, or "
        "torch.cuda.memory._dump_snapshot) through the caching-allocator model: simulated "
        "vs real reserved memory.",
    )
    parser.add_argument("snapshot", type=Path, help="a pickled memory snapshot")
    parser.add_argument("--device", type=int, default=0, help="the device whose trace to replay")
    args = parser.parse_args(argv)
    try:
        print(compare_snapshot(args.snapshot, args.device))
    except (OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as e:
        print(f"error: snapshot {str(args.snapshot)!r}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
