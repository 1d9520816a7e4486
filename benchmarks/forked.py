"""Quick runs only: measurement processes forked from one process that has imported the libraries.

A full benchmark run measures each thing in a fresh interpreter, so that imports, caches and
peak memory of one measurement never reach another; each such process spends seconds importing
torch. A `--quick` run (the smoke tests) only checks that every stage runs and returns the
right data, so there `ForkServer` starts `python forked.py` once, which imports torch, numpy,
neurocodec (with its plugins), the peers that are installed, pynwb and h5py, and then forks one
child per request. The child runs the script as `python SCRIPT ARGS` would (as `__main__`, with
that `sys.argv`, in the given directory, stdout and stderr to the given files) and exits with
its status. Multiprocessing inside it works as in a fresh process: DataLoader workers fork from
it, spawned workers start fresh interpreters that import the script from its path.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PRELOAD = ("numpy", "torch", "torch.utils.data", "neurocodec", "webdataset", "streaming", "litdata", "pynwb",
           "h5py", "tqdm.auto")


class ForkServer:
    """The server process; `run` one script per call, `close` when done."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self._proc: subprocess.Popen | None = None

    def run(self, script: str | Path, argv: list[str], *, stdout: Path, stderr: Path | None = None,
            cwd: Path | None = None) -> int:
        """Run `python script *argv` in a forked child; its exit status (negative: killed by that
        signal). `stderr` None: into the `stdout` file."""
        if self._proc is None:
            with open(self.log, "ab") as log:
                self._proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve())], stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, stderr=log, text=True)
        request = {"script": str(script), "argv": [str(a) for a in argv], "stdout": str(stdout),
                   "stderr": str(stderr or stdout), "cwd": str(cwd or os.getcwd())}
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server exited ({self._proc.wait()}); see {self.log}")
        return int(line)

    def close(self) -> None:
        """Stop the server (it ends when its input closes)."""
        if self._proc is not None:
            self._proc.stdin.close()
            self._proc.wait(timeout=60)
            self._proc = None


def _preload() -> None:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # a peer that is not installed: its probe reports that, in the child
            pass
    try:
        from libs import LIBRARIES

        LIBRARIES["neurocodec"].preload(loader=True)  # the plugins' modules
    except Exception:
        traceback.print_exc()


def _child(request: dict[str, Any]) -> None:
    """In the forked process: redirect, run the script as __main__, exit with its status."""
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = out if request["stderr"] == request["stdout"] else \
        os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.chdir(request["cwd"])
    sys.argv = [request["script"], *request["argv"]]
    sys.path[0] = str(Path(request["script"]).resolve().parent)
    code = 0
    try:
        runpy.run_path(request["script"], run_name="__main__")
    except SystemExit as exc:
        if isinstance(exc.code, int) or exc.code is None:
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def serve() -> None:
    """The server: preload, then one fork per request line, answered with the exit status."""
    _preload()
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                _child(request)
            finally:
                os._exit(70)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)


if __name__ == "__main__":
    serve()
