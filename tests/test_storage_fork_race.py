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
import time

import pytest

from neurocodec.storage.cache import _Lock


def _churn_locks(path, stop: threading.Event) -> None:
    while not stop.is_set():
        _Lock(path).close()


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
    stop = threading.Event()
    churners = [threading.Thread(target=_churn_locks, args=(tmp_path / f"{i}.lock", stop)) for i in range(2)]
    for thread in churners:
        thread.start()
    lost, forks, deadline = 0, 0, time.monotonic() + 3.0
    try:
        while time.monotonic() < deadline:
            read_fd, write_fd = os.pipe()
            lost += not _child_sees_its_pipe(read_fd, write_fd)
            forks += 1
            os.close(read_fd)
            os.close(write_fd)
    finally:
        stop.set()
        for thread in churners:
            thread.join()
    assert forks > 50
    assert lost == 0, f"{lost} of {forks} children lost a pipe descriptor to the lock clean-up"
