"""Running the conversion of many files: in this process, in spawned worker processes, or on any
`concurrent.futures.Executor`; results handed back in input order."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Hashable, Mapping

from neurocodec.errors import NeurocodecError
from neurocodec.nwb.guard import SPAWN_ADVICE, unguarded_main_call


class ConversionError(NeurocodecError):
    """The conversion as a whole failed (not one input file): e.g. its worker processes died."""


Collect = Callable[[Hashable, Callable[[], Any]], None]


def run_tasks(tasks: Mapping[Hashable, tuple], function: Callable[..., Any], collect: Collect, *,
              workers: int, executor: concurrent.futures.Executor | None, fail_fast: bool,
              advance: Callable[[], Any]) -> None:
    """Call `function(*args)` for each task and hand each outcome to `collect(key, result)`, in
    the order of `tasks` (`result()` returns the value or raises the task's error). `advance` is
    called as each task ends; with `fail_fast` the first failure cancels the tasks not started."""
    if executor is None and workers == 1:
        for key, args in tasks.items():
            collect(key, lambda args=args: function(*args))
            advance()
        return
    owned = executor is None
    if owned:
        script = unguarded_main_call()
        if script is not None:
            raise ConversionError(f"workers={workers} cannot start from the top level of {script}: "
                                  f"{SPAWN_ADVICE}")
        executor = concurrent.futures.ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    futures: dict = {}
    try:
        for key, args in tasks.items():  # one by one: a failed submit still cancels the others
            futures[key] = executor.submit(function, *args)
        for future in concurrent.futures.as_completed(futures.values()):
            advance()
            if fail_fast and future.exception() is not None:
                break
        for key, future in futures.items():  # results and errors in input order
            if future.done():
                collect(key, lambda future=future: _result(future))
            else:
                future.cancel()
    except BaseException:
        for future in futures.values():
            future.cancel()
        raise
    finally:
        if owned:
            executor.shutdown(wait=True, cancel_futures=True)


def _result(future: concurrent.futures.Future) -> Any:
    try:
        return future.result()
    except BrokenProcessPool as exc:
        raise ConversionError(f"a conversion worker process died before finishing ({exc}); if this "
                              f"happened at once, {SPAWN_ADVICE}") from None
