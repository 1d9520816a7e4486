"""Running reads of hostile datasets in other processes, so that a crash fails a test instead of
killing pytest, and under an address-space cap, so that runaway allocation fails it too.

`ForkServer` starts one child interpreter (`python tests/isolated.py MODULE...`) that imports the
named modules once, then forks a fresh process per job. A job is a function named
"module:function" (tests/ is on the server's sys.path) called with JSON keyword arguments; it
runs with its soft RLIMIT_AS set to its own address-space size plus `headroom`, with
faulthandler on (a SIGSEGV or SIGBUS prints the Python stack) and a watchdog that ends a job
still running after `watchdog` seconds (a hang becomes a failed job with a stack, not a stuck
test). What comes back is an `Outcome`: the function's JSON result, the exception it raised, or
the signal or exit status that ended the process, with its stderr.

`start` returns as soon as the job's process exists (its pid, for a test that kills it from
outside; with `session=True` it leads its own process group, workers included) and `Job.wait`
gives its `Outcome`; the kill tests run their training and writer processes this way.

Forking per job costs milliseconds where a fresh interpreter importing torch costs seconds, and
every job starts from the same clean state (no cache warmed by a previous hostile case).
"""

from __future__ import annotations

import faulthandler
import importlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
MiB = 1 << 20


def address_space() -> int:
    """This process's current virtual memory size (VmSize) in bytes."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmSize:"))
    return int(line.split()[1]) * 1024


def cap_address_space(headroom: int) -> int:
    """Set the soft RLIMIT_AS to the current size plus `headroom`; return the limit."""
    limit = address_space() + headroom
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return limit


def describe(exc: BaseException) -> dict[str, Any]:
    """An exception as JSON: type, whether it is neurocodec's own, message, traceback tail."""
    from neurocodec.errors import NeurocodecError

    return {"type": type(exc).__name__, "neurocodec": isinstance(exc, NeurocodecError),
            "message": str(exc)[:2000], "traceback": traceback.format_exc()[-4000:]}


@dataclass
class Outcome:
    """How one job ended."""

    returned: Any = None
    raised: dict[str, Any] | None = None
    signal: str | None = None
    exit_code: int | None = None
    stderr: str = ""
    stdout: str = ""
    reported: bool = False

    @property
    def crashed(self) -> bool:
        """Killed by a signal, or ended without reporting (watchdog, os._exit, fatal error)."""
        return self.signal is not None or self.exit_code != 0 or not self.reported

    def explain(self) -> str:
        """A few lines for an assertion message."""
        how = f"killed by {self.signal}" if self.signal else f"exit status {self.exit_code}"
        return f"{how}; raised={self.raised}; stderr tail:\n{self.stderr[-3000:]}"


class ForkServer:
    """A child interpreter that forks one process per job (see the module docstring)."""

    def __init__(self, *preload: str, warmup: str | None = None, env: dict[str, str] | None = None) -> None:
        self.preload, self.warmup = preload, warmup
        self.env = dict(os.environ if env is None else env)
        self.workdir = Path(tempfile.mkdtemp(prefix="forkserver-"))
        self.proc: subprocess.Popen | None = None
        self.jobs = 0

    def _start(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            env = dict(self.env, PYTHONPATH=os.pathsep.join([str(TESTS), self.env.get("PYTHONPATH", "")]))
            args = [sys.executable, str(Path(__file__)), *self.preload] + (["--warmup", self.warmup] if self.warmup else [])
            self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                         env=env, cwd=str(TESTS))
        return self.proc

    def run(self, call: str, *, headroom: int | None = 512 * MiB, watchdog: float = 60.0, **kwargs: Any) -> Outcome:
        """Run `call(**kwargs)` in a fresh forked process; see `Outcome`."""
        return self.start(call, headroom=headroom, watchdog=watchdog, **kwargs).wait()

    def start(self, call: str, *, headroom: int | None = 512 * MiB, watchdog: float = 60.0, session: bool = False,
              **kwargs: Any) -> Job:
        """Fork the process of `call(**kwargs)` and return at once (wait for it with `Job.wait`
        before starting another). `headroom` None: no address-space cap; `session`: the job
        leads a new session and process group (so `os.killpg(job.pid, ...)` reaches the
        processes it starts, and its `os.killpg(0, ...)` spares the server)."""
        proc = self._start()
        self.jobs += 1
        stem = self.workdir / f"job{self.jobs}"
        job = {"call": call, "kwargs": kwargs, "headroom": headroom, "watchdog": watchdog, "session": session,
               "result": f"{stem}.json", "stderr": f"{stem}.err", "stdout": f"{stem}.out"}
        proc.stdin.write(json.dumps(job) + "\n")
        proc.stdin.flush()
        return Job(self, job, self._status()["pid"])

    def _status(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server died (status {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        """Stop the server (it exits when its input closes) and remove the job files."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


class Job:
    """A job's process, started by `ForkServer.start`."""

    def __init__(self, server: ForkServer, job: dict[str, Any], pid: int) -> None:
        self.server, self.job, self.pid = server, job, pid

    @property
    def stdout_path(self) -> Path:
        """The file the job's standard output goes to, as it is written."""
        return Path(self.job["stdout"])

    def alive(self) -> bool:
        """Whether the job's process still runs (the server reaps it as soon as it ends)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def wait(self) -> Outcome:
        """How the job ended, once it has."""
        status = self.server._status()
        out = Outcome(stderr=_read(self.job["stderr"]), stdout=_read(self.job["stdout"]), signal=status["signal"],
                      exit_code=status["exit_code"])
        report = _read(self.job["result"])
        if report:
            doc = json.loads(report)
            out.returned, out.raised, out.reported = doc.get("returned"), doc.get("raised"), True
        return out


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _resolve(name: str) -> Any:
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


def _child(job: dict[str, Any]) -> None:
    """The forked process: redirect, cap, run the job, write its report, exit."""
    if job["session"]:
        os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    faulthandler.enable(file=sys.stderr, all_threads=True)
    faulthandler.dump_traceback_later(job["watchdog"], exit=True)
    report: dict[str, Any]
    before = resource.getrlimit(resource.RLIMIT_AS)
    try:
        if job["headroom"] is not None:
            cap_address_space(job["headroom"])
        report = {"returned": _resolve(job["call"])(**job["kwargs"])}
    except BaseException as exc:  # recorded, whatever it is: the test judges it
        report = {"raised": describe(exc)}
    resource.setrlimit(resource.RLIMIT_AS, before)
    try:
        text = json.dumps(report)
    except (TypeError, ValueError) as exc:
        text = json.dumps({"raised": {"type": "ReportError", "neurocodec": False, "message": repr(exc)[:500]}})
    Path(job["result"]).write_text(text)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def serve(argv: list[str]) -> None:
    """The server's loop: import `argv`'s modules, run the warm-up, then one fork per job line."""
    warmup = None
    if "--warmup" in argv:
        at = argv.index("--warmup")
        warmup, argv = argv[at + 1], argv[:at] + argv[at + 2:]
    for name in argv:
        importlib.import_module(name)
    if warmup:
        _resolve(warmup)()
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                _child(job)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(70)
        sys.stdout.write(json.dumps({"pid": pid}) + "\n")
        sys.stdout.flush()
        _, status = os.waitpid(pid, 0)
        sig = signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status) else None
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        sys.stdout.write(json.dumps({"signal": sig, "exit_code": code}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve(sys.argv[1:])
