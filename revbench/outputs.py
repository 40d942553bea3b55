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

MANIFEST_FILE = "manifest.json"  # what makes a directory a run directory (revbench.store)


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


EMPTY = "-"
MIN_TEXT_WIDTH = 12  # the narrowest a wrapped label or description gets
# Columns that say what a row is rather than what was measured: when every row has the
# same value, it moves to the caption and the table keeps its width for the figures.
FOLDABLE = ("mode", "res", "batch", "prec", "status")


def fit_table(
    title: str, columns: list[str], rows: list[list[str]], left: tuple[str, ...], width: int
):
    """A rich table no wider than `width` (an 80-column terminal included): columns empty
    on every row are left out (step times on estimator runs), a column with one value on
    every row is said once in the caption, and when the rest is still too wide, the
    widest text column (a model label, a description) wraps; figures never do."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    empty = [c for k, c in enumerate(columns) if rows and all(r[k] == EMPTY for r in rows)]
    folded = [
        (c, rows[0][k])
        for k, c in enumerate(columns)
        if c in FOLDABLE and len(rows) > 1 and len({r[k] for r in rows}) == 1
    ]
    caption = [f"{c} {v}" for c, v in folded]
    if empty:
        caption.append(f"no {', '.join(empty)}: empty on every row")
    hidden = set(empty) | {c for c, _ in folded}
    keep = [k for k, c in enumerate(columns) if c not in hidden]
    natural = {k: max([len(columns[k])] + [len(r[k]) for r in rows]) for k in keep}
    gaps = 2 * (len(keep) - 1)  # the divider (a space) and one space of padding
    over = sum(natural.values()) + gaps - width
    text = [k for k in keep if columns[k] in left]
    if over > 0 and text:
        widest = max(text, key=lambda k: natural[k])
        natural[widest] = max(MIN_TEXT_WIDTH, natural[widest] - over)
    table = Table(
        title=title,
        caption=escape("; ".join(caption)) or None,
        box=box.SIMPLE_HEAD,
        padding=(0, 0, 0, 1),
        pad_edge=False,
        show_edge=False,
    )
    for k in keep:
        name = columns[k]
        table.add_column(
            name,
            justify="left" if name in left else "right",
            width=natural[k],
            overflow="fold",  # a label too long for its column goes on, never loses its end
        )
    for r in rows:
        table.add_row(*(escape(r[k]) for k in keep))
    return table
