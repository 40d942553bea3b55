"""Bad input from the user, for models and harness alike (the harness re-exports it).

It lives here, at the bottom layer, because the registry raises it (a plugin named in
REVBENCH_PLUGINS that cannot be imported) and models/ imports nothing from the harness.
"""


class UsageError(Exception):
    """Bad input from the user: a one-line message naming the bad value and valid choices.
    The CLI prints it as one line and exits with `exit_code`."""

    exit_code = 2
