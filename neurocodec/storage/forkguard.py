"""One lock that `fork` takes, so descriptor bookkeeping is never half done in a child.

The cache's lock files and the writer's lock are closed in a forked child (a DataLoader worker
must never keep a lock alive). The child closes the descriptor numbers its parent recorded. If
another thread of the parent had closed such a descriptor but not yet crossed it off, the number
could already name something else (the pipe the forking thread just made for the worker's index
queue), and the child would close that. Opening-and-recording and closing-and-crossing-off
therefore happen under `FORK_GUARD`, which `os.fork` acquires before it forks and releases in
both processes afterwards.
"""

from __future__ import annotations

import os
import threading

FORK_GUARD = threading.Lock()
"""Held while a lock descriptor is opened and recorded, or closed and crossed off; `os.fork`
waits for it. Never hold it across anything that blocks (flock with wait, network I/O)."""


def _release() -> None:
    FORK_GUARD.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=FORK_GUARD.acquire, after_in_parent=_release, after_in_child=_release)
