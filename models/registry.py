"""One registry of named things: models here, and the harness's tasks and methods.

    TASKS = Registry("task")
    TASKS.register("classify", Classify())
    TASKS.get("pose")  # ValueError: task 'pose' is invalid; valid: classify

Names keep their registration order: that is the order every listing and every error
message gives them in.

An entry's code may be named rather than imported, as "package.module:name" (`is_ref`,
`import_ref`): model builders and measurement methods are, so that reading a registry
costs no torch import.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_REQUIRED = object()  # `get` without a default


def is_ref(value: object) -> bool:
    """Whether `value` names an object as "package.module:name"."""
    return isinstance(value, str) and value.count(":") == 1 and all(value.split(":"))


def import_ref(ref: str) -> Any:
    """The object "package.module:name" names, its module imported now."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


class Registry(Generic[T]):
    """Named entries of one kind; a second entry under a taken name is refused.

    `unknown` is the message `get` raises as `error` for a name not registered, formatted
    with `kind`, `name` (repr) and `valid` (the names, comma-separated).
    """

    def __init__(
        self,
        kind: str,
        *,
        error: type[Exception] = ValueError,
        unknown: str = "{kind} {name} is invalid; valid: {valid}",
    ):
        self.kind = kind
        self.error = error
        self.unknown = unknown
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str, default: Any = _REQUIRED) -> T:
        """The entry under `name`; for a name not registered, `default` when one is given,
        else the one-line `error`."""
        try:
            return self._entries[name]
        except KeyError:
            if default is not _REQUIRED:
                return default
            valid = ", ".join(self._entries)
            message = self.unknown.format(kind=self.kind, name=repr(name), valid=valid)
            raise self.error(message) from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __iter__(self) -> Iterator[T]:
        """The entries, in registration order."""
        return iter(tuple(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    # Item access, so a test can swap an entry for a double (pytest's monkeypatch.setitem)
    # and put the original back; registering goes through `register`.
    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __setitem__(self, name: str, entry: T) -> None:
        if name not in self._entries:
            raise self.error(f"{self.kind} {name!r} is not registered: register it first")
        self._entries[name] = entry
