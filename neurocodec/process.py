"""Values that belong to one process: made on first use, made again after a fork.

Open files, fsspec clients and background threads do not survive a fork (a forked DataLoader
worker must not share its parent's file offsets, sockets or threads), and they cannot be
pickled to a spawned one. `PerProcess` holds such a value for the process that made it: a forked
child gets a fresh one on first use, and a pickled copy arrives empty.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    """One value per process, made by the factory handed to `get` on first use in each."""

    def __init__(self) -> None:
        self._value: T | None = None
        self._pid = -1

    def get(self, make: Callable[[], T]) -> T:
        """This process's value, made with `make()` if this process has none yet."""
        if self._pid != os.getpid():
            self._value, self._pid = make(), os.getpid()
        return self._value  # type: ignore[return-value]

    def current(self) -> T | None:
        """This process's value if it has made one, else None (never makes one)."""
        return self._value if self._pid == os.getpid() else None

    def forget(self) -> None:
        """Drop the value: the next `get` makes a new one."""
        self._value, self._pid = None, -1

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()
