"""Helpers for the loader tests: tiny real datasets whose samples say which sample they are.

Sample `i` (0-based global id, key `sample_{i+1:09d}`) holds `x = [i, 7*i + 1]` (int64) and
metadata `{"id": i}`, so every test can check that the arrays it got belong to the key it got.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from neurocodec import WebDatasetWriter


def write_ids_dataset(path: Path, n: int, shard_size: int, *, compression: str = "none") -> Path:
    """Write `n` samples in shards of `shard_size` to `path` (fsync off: tests only)."""
    with WebDatasetWriter(path, shard_size=shard_size, compression=compression, fsync=False) as w:
        for i in range(n):
            w.write_sample({"x": np.array([i, 7 * i + 1], dtype=np.int64)}, metadata={"id": i})
    return path


class DatasetCache:
    """Datasets by (n, shard_size), written once under `root` and reused across examples."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: dict[tuple[int, int], Path] = {}

    def get(self, n: int, shard_size: int) -> Path:
        """The dataset of `n` samples in shards of `shard_size`."""
        key = (n, shard_size)
        if key not in self._made:
            self._made[key] = write_ids_dataset(self.root / f"ds_{n}_{shard_size}", n, shard_size)
        return self._made[key]


def key_id(key: str) -> int:
    """Global sample id of a key (keys are numbered from 1)."""
    assert key.startswith("sample_"), key
    return int(key[len("sample_"):]) - 1


def sample_id(sample: dict[str, Any]) -> int:
    """Id of a sample yielded by a loader, after checking its array and metadata agree with its key."""
    i = key_id(sample["__key__"])
    assert sample["metadata"] == {"id": i}, (sample["__key__"], sample["metadata"])
    assert [int(v) for v in sample["x"]] == [i, 7 * i + 1], (sample["__key__"], sample["x"])
    return i


def batch_ids(batch: dict[str, Any]) -> list[int]:
    """Ids of a collated batch, after checking arrays, metadata and keys agree row by row."""
    ids = [key_id(k) for k in batch["__key__"]]
    assert [m["id"] for m in batch["metadata"]] == ids
    x = batch["x"]
    assert tuple(x.shape) == (len(ids), 2), x.shape
    assert x[:, 0].tolist() == ids and x[:, 1].tolist() == [7 * i + 1 for i in ids]
    return ids


def flat_ids(batches: Iterable[dict[str, Any]]) -> list[int]:
    """Ids of a stream of collated batches, in order."""
    return [i for b in batches for i in batch_ids(b)]


def shard_sizes(n: int, shard_size: int) -> list[int]:
    """Samples per shard of a dataset written with `write_ids_dataset`."""
    return [min(shard_size, n - s) for s in range(0, n, shard_size)]


def shard_of(ids: Sequence[int], shard_size: int) -> np.ndarray:
    """Shard number of each id."""
    return np.asarray(ids, dtype=np.int64) // shard_size


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a child Python process: this one's, minus rank variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(extra)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_ranks(script: Path, cfg: dict[str, Any], world: int, out: Path, timeout: float = 180,
              server: Any = None) -> list[dict]:
    """Run `python script <cfg as JSON> <rank>` in `world` processes, one gloo group (cfg gains
    `world`, a free `port` and `out`); each writes its report to `<out>.<rank>`. The reports by
    rank; an AssertionError with the log of a rank that failed. With `server` (the session's
    `rank_server`, an isolated.ForkServer) the ranks are forked from it, torch already imported
    (see `rank_group`); else each is a fresh interpreter."""
    import json

    cfg = dict(cfg, world=world, port=free_port(), out=str(out))
    if server is None:
        codes, logs = _fresh_ranks(script, cfg, world, timeout)
    else:
        job = server.start("loader_util:rank_group", script=str(script), cfg=cfg, world=world, logs=f"{out}.log",
                           headroom=None, watchdog=timeout, session=True)
        done = job.wait()
        try:
            os.killpg(job.pid, signal.SIGKILL)  # any rank left behind by a job that failed
        except ProcessLookupError:
            pass
        assert done.returned is not None, done.explain()
        codes, logs = done.returned, [Path(f"{out}.log.{r}").read_text(errors="replace") for r in range(world)]
    for code, log in zip(codes, logs):
        assert code == 0, log[-3000:]
    return [json.loads(Path(f"{out}.{r}").read_text()) for r in range(world)]


def _fresh_ranks(script: Path, cfg: dict[str, Any], world: int, timeout: float) -> tuple[list[int], list[str]]:
    import json
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, str(script), json.dumps(cfg), str(r)], env=child_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(world)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0].decode(errors="replace"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs], logs


def rank_group(script: str, cfg: dict[str, Any], world: int, logs: str) -> list[int]:
    """In a ForkServer job: `python script <cfg> <rank>` for every rank at once, each forked from
    this process and run as that command runs it (`__main__`, that `sys.argv`, output to
    `<logs>.<rank>`); their exit statuses, in rank order."""
    import json

    pids = []
    for rank in range(world):
        pid = os.fork()
        if pid == 0:
            _rank_process(script, [json.dumps(cfg), str(rank)], f"{logs}.{rank}")
        pids.append(pid)
    return [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]


def _rank_process(script: str, args: list[str], log: str) -> None:
    import runpy
    import sys
    import traceback

    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.argv = [script, *args]
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def line_events(module: Any, call: Any) -> int:
    """Lines of `module`'s source file run by `call()`: the Python work it does there, a measure
    that does not depend on the machine's speed."""
    import sys

    count = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        if frame.f_code.co_filename == module.__file__:
            if event == "line":
                count += 1
            return tracer
        return None

    sys.settrace(tracer)
    try:
        call()
    finally:
        sys.settrace(None)
    return count
