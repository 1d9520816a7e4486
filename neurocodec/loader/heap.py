"""Keeping the cyclic garbage collector off the training process's heap while forked workers run.

After `fork`, the parent and its DataLoader workers share every memory page until one of them
writes to it. A full collection in the parent writes to the header of every object it
traverses (torch's, the model's, the user's), so the first one after a fork copies most of
the heap page by page: measured at ~95 ms on a 2-core VM, landing on the first batch of each
epoch. `gc.freeze()` before forking moves the existing objects to a generation the collector
never visits, which is what the Python documentation recommends around `fork`; they are handed
back with `gc.unfreeze()` when the last loader iterating with forked workers stops, so cyclic
garbage that existed before is collected then, never lost. A process that froze its heap itself
is left alone.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import threading
from typing import Any, Iterator

_lock = threading.Lock()
_active = 0


def start_method(context: Any) -> str:
    """The start method of DataLoader workers started with `context` (None, a start method name
    or a multiprocessing context, as DataLoader takes it; None is the process's default)."""
    if context is None:
        return multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_context().get_start_method()
    if isinstance(context, str):
        return context
    return context.get_start_method()


def forks(context: Any) -> bool:
    """Whether DataLoader workers started with `context` are forked from this process."""
    return start_method(context) == "fork"


@contextlib.contextmanager
def frozen_heap(enabled: bool = True) -> Iterator[None]:
    """Freeze the heap (see the module documentation) for the duration of the block; nestable
    and shared between loaders iterating at the same time."""
    global _active
    with _lock:
        owned = enabled and (_active > 0 or gc.get_freeze_count() == 0)
        if owned:
            if _active == 0:
                gc.freeze()
            _active += 1
    try:
        yield
    finally:
        if owned:
            with _lock:
                _active -= 1
                if _active == 0:
                    gc.unfreeze()
