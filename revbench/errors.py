"""User-facing errors: the CLI prints them as one line and exits with code 2."""

from revbench.models.errors import UsageError

__all__ = ["UsageError"]
