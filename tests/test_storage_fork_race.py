"""A fork while another thread opens or closes a cache lock never touches the child's other
descriptors.

The child closes the lock descriptors it inherits (so a DataLoader worker never keeps a lock
alive). Without a guard, a thread could close lock descriptor N, the forking thread could get N
back for a new pipe (the DataLoader worker's index queue), and the child would then close its
own pipe: in CI a worker died with EOFError reading its index queue.
"""

from __future__ import annotations

import os
import threading

import pytest

from neurocodec.storage.cache import _Lock


def _churn_locks(path, stop: threading.Event, churned: list) -> None:
    while not stop.is_set():
        _Lock(path).close()
        churned.append(1)


def _child_sees_its_pipe(read_fd: int, write_fd: int) -> bool:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        ok = True
        try:
            os.fstat(read_fd)
            os.fstat(write_fd)
        except OSError:
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


@pytest.mark.multiprocess
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_during_lock_churn_keeps_the_childs_pipes(tmp_path):
    stop, churned = threading.Event(), []
    churners = [threading.Thread(target=_churn_locks, args=(tmp_path / f"{i}.lock", stop, churned)) for i in range(2)]
    for thread in churners:
        thread.start()
    # A fixed number of forks, not a time budget: a fork from a large test process on a loaded
    # machine can take 100 ms, and the race needs forks, not seconds.
    lost, forks = 0, 60
    try:
        for _ in range(forks):
            read_fd, write_fd = os.pipe()
            lost += not _child_sees_its_pipe(read_fd, write_fd)
            os.close(read_fd)
            os.close(write_fd)
    finally:
        stop.set()
        for thread in churners:
            thread.join()
    assert len(churned) > forks, "the lock threads did not run alongside the forks"
    assert lost == 0, f"{lost} of {forks} children lost a pipe descriptor to the lock clean-up"
