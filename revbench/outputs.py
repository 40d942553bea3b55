"""Checks on where a command will write, made before any work is done.

Every output option (`run --out`, `--csv`, `plot --out`, `gate --export-json`, the
`gate --update` baseline) is checked up front: an empty path, a file where a directory
belongs (or the reverse), a path under a file, a place this user cannot write. A failure
is a one-line UsageError naming the option and the path, and nothing has been written.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import UsageError

MANIFEST_FILE = "manifest.json"  # what makes a directory a run directory (revbench.results)


def _nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _writable_dir(path: Path) -> bool:
    # Tried, not inferred from permission bits: root passes every os.access check, yet
    # cannot create files in /proc or on a read-only mount. An anonymous temporary file
    # (O_TMPFILE where the filesystem has it) leaves nothing behind.
    try:
        with tempfile.TemporaryFile(dir=path):
            return True
    except OSError:
        return False


def _check_creatable(path: Path, option: str) -> None:
    """`path` does not exist: its nearest existing ancestor must be a writable directory."""
    anchor = _nearest_existing(path.parent)
    if not anchor.is_dir():
        raise UsageError(f"{option} {path} is invalid: {anchor} is a file, not a directory")
    if not _writable_dir(anchor):
        raise UsageError(f"{option} {path} is invalid: {anchor} is not writable")


def check_output_dir(value: str | Path, option: str, *, run_root: bool = False) -> Path:
    """A directory the command may create or write into.

    `run_root`: the directory runs are written under (`run --out`); it must not be inside
    a run directory, where the new run would be read as part of that one.
    """
    if str(value).strip() == "":
        raise UsageError(f"{option} is empty; give a directory")
    path = Path(value)
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"{option} {path} is a file; give a directory")
        if not _writable_dir(path):
            raise UsageError(f"{option} {path} is not writable")
    else:
        _check_creatable(path, option)
    if run_root:
        for parent in (path, *path.resolve().parents):
            if (parent / MANIFEST_FILE).is_file():
                raise UsageError(
                    f"{option} {path} is inside the run directory {parent}; give a directory "
                    "outside every run (results/ by default)"
                )
    return path


def check_output_file(value: str | Path, option: str) -> Path:
    """A file the command may create or replace."""
    if str(value).strip() == "":
        raise UsageError(f"{option} is empty; give a file path")
    path = Path(value)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a directory; give a file path")
    if path.exists():
        if not os.access(path, os.W_OK) or not _writable_dir(path.parent):
            raise UsageError(f"{option} {path} is not writable")
    else:
        _check_creatable(path, option)
    return path
