"""User-facing errors: the CLI prints them as one line and exits with code 2 (bad input)
or 4 (the machine refused a write: no space, a read-only file system, no permission)."""

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path

from revbench.models.errors import UsageError

__all__ = ["ENVIRONMENT_ERRNOS", "ENVIRONMENT_EXIT_CODE", "UsageError", "naming"]

# What the machine, not revbench or its input, is to blame for.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
ENVIRONMENT_EXIT_CODE = 4


@contextlib.contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """OSErrors of the block name `path` (a failed write says no file name otherwise), so
    the one line the CLI prints says where."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
