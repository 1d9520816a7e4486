"""Starting and stopping a DataLoader's worker processes for `WebDatasetDataLoader`.

Under forkserver, creating the DataLoader's iterator blocks until the fork server has started
and imported its preloaded modules (torch: seconds), once per process. `WorkerStart` creates it
in a thread instead, so that the training process builds batches meanwhile; under fork it is
created at once in the calling thread (forking from a second thread while the first runs torch
code could copy a lock held mid-operation into the workers), and under spawn too (starting a
spawned process only launches an interpreter: it does not wait for it).

How long the workers take to start is remembered per start method (`expected_startup_s`), so
that a loader can build a short epoch in the training process instead of starting workers that
would be ready only after it ended.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import torch.utils.data

from neurocodec.loader.heap import start_method

DEFAULT_STARTUP_S = 2.0
"""Seconds spawned or forkserver workers are expected to take to start before any start was seen
in this process: each imports torch (1-3 s of CPU per process on a 2-core machine)."""
_seen_startup_s: dict[str, float] = {}  # by start method: the last start seen in this process


class WorkerStart:
    """The iterator `make()` returns (it starts the workers), made now or in a thread.

    `ready()` says whether it exists; `get()` waits for it (raising what `make` raised);
    `stop()` and `abandon()` stop the workers."""

    def __init__(self, make: Callable[[], Any], context: Any) -> None:
        self._make = make
        self._iterator: Any = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        if start_method(context) != "forkserver":
            self._run()
        else:
            torch.utils.data._utils.signal_handling._set_SIGCHLD_handler()  # (only the main thread may)
            # Not a daemon: a thread left inside torch when the interpreter exits aborts it.
            self._thread = threading.Thread(target=self._run, name="neurocodec-worker-start")
            self._thread.start()

    def _run(self) -> None:
        try:
            self._iterator = self._make()
        except BaseException as exc:  # handed to get()
            self._error = exc
        self._done.set()

    def ready(self) -> bool:
        """Whether the iterator has been made (or making it failed)."""
        return self._done.is_set()

    def get(self) -> Any:
        """The iterator, once made."""
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return self._iterator

    def stop(self) -> None:
        """Stop the workers, waiting for them to exit cleanly, if the iterator was made."""
        if self._done.is_set() and self._iterator is not None:
            stop_workers(self._iterator)

    def abandon(self) -> None:
        """Stop workers that were never handed work without waiting for them to finish
        starting; under forkserver, once the fork server has forked them (the thread making
        the iterator is waited for: the workers' arguments must stay valid until then)."""
        if self._thread is not None:
            self._thread.join()
        if self._iterator is not None:
            abandon_workers(self._iterator)


def expected_startup_s(context: Any) -> float:
    """Seconds DataLoader workers started with `context` are expected to take until every one
    is ready: 0 under fork; else the last start seen in this process under the same method
    (`note_startup`), or `DEFAULT_STARTUP_S` before any."""
    method = start_method(context)
    return 0.0 if method == "fork" else _seen_startup_s.get(method, DEFAULT_STARTUP_S)


def note_startup(context: Any, seconds: float, *, finished: bool) -> None:
    """Remember a start of workers under `context` that took `seconds` (`finished`: every worker
    became ready), or that had not finished after `seconds` (the start took longer than that)."""
    method = start_method(context)
    if not finished:
        seconds = max(seconds, _seen_startup_s.get(method, DEFAULT_STARTUP_S))
    _seen_startup_s[method] = seconds


def abandon_workers(batches: Any) -> None:
    """Stop workers that were never handed any work, without waiting for them to finish
    starting (a spawned one imports torch for seconds): they hold no slot yet, or wait for
    their start. Their pids leave torch's SIGCHLD watch first, so the signal is not taken for a
    worker that failed. A worker killed here may have held a lock the processes share (torch's
    worker loop takes the lock of its `done` event to read it), so they are closed without
    taking any (`_close_without_locks`): torch's own shutdown would wait on such a lock forever."""
    if getattr(batches, "_worker_pids_set", False):
        torch.utils.data._utils.signal_handling._remove_worker_pids(id(batches))
        batches._worker_pids_set = False
    workers = list(getattr(batches, "_workers", ()))
    for process in workers:
        if process.is_alive():
            process.terminate()
    for process in workers:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join()
    _close_without_locks(batches)


def _close_without_locks(batches: Any) -> None:
    """torch's `_shutdown_workers` for an iterator whose workers are all gone, without setting
    the workers' `done` event (its lock may be held by a killed worker): the pin-memory thread
    is stopped, the queues closed without waiting for their feeder threads, and the iterator
    marked shut down, so its own shutdown does nothing later."""
    if getattr(batches, "_shutdown", True):
        return
    batches._shutdown = True
    results = batches._worker_result_queue
    if hasattr(batches, "_pin_memory_thread"):
        batches._pin_memory_thread_done_event.set()
        results.put((None, None))  # wakes the thread (else it checks the event every few seconds)
        batches._pin_memory_thread.join()
    for queue in [results, *batches._index_queues]:
        queue.cancel_join_thread()
        queue.close()


def stop_workers(batches: Any) -> None:
    """Stop the DataLoader's workers now: a loop left by an exception (a worker's error, the
    training loop's `break`) keeps its iterator alive in the traceback, and torch would stop
    them only when the garbage collector reaches it, waiting for each worker then."""
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
