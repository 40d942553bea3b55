"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class UsageError(Exception):
    """Bad input from the user: a one-line message naming the bad value and valid choices."""

    exit_code = 2
