"""`PerProcess`: one value per process, made again in a forked child, empty when pickled."""

from __future__ import annotations

import multiprocessing
import os
import pickle

from neurocodec.process import PerProcess


def _child(holder: PerProcess, queue) -> None:
    queue.put((holder.current(), holder.get(lambda: ("child", os.getpid()))))


def test_made_once_per_process_and_again_after_a_fork() -> None:
    made = []
    holder: PerProcess = PerProcess()
    assert holder.current() is None
    first = holder.get(lambda: made.append(1) or ("parent", os.getpid()))
    assert holder.get(lambda: made.append(2)) is first and made == [1]
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(holder, queue))
    child.start()
    before, after = queue.get(timeout=30)
    child.join(30)
    assert child.exitcode == 0
    assert before is None and after[0] == "child" and after[1] != os.getpid()
    assert holder.current() == ("parent", os.getpid())


def test_a_pickled_copy_arrives_empty_and_forget_drops_the_value() -> None:
    holder: PerProcess = PerProcess()
    holder.get(lambda: object())
    copy = pickle.loads(pickle.dumps(holder))
    assert copy.current() is None and copy.get(lambda: 7) == 7
    holder.forget()
    assert holder.current() is None
