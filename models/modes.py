"""The reversible engine's execution modes, without torch: configs check their mode with
these before anything is built, and the engine (models/reversible.py) runs them."""

from __future__ import annotations

from collections.abc import Sequence

MODES = ("reversible", "vanilla", "checkpoint")


def check_mode(mode: str, valid: Sequence[str] = MODES) -> str:
    """The one check of an execution mode (configs, stacks and `set_mode` call it)."""
    if mode not in valid:
        raise ValueError(f"mode {mode!r} is invalid; valid: {', '.join(valid)}")
    return mode
