"""The `neurocodec` command fails in one line, never with a traceback: an output path in the way,
unusable flag values, a dataset that needs more memory than the process may use, and a reader
of its output that went away (`| head -1`). Run as real subprocesses and real shell pipes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neurocodec import WebDatasetWriter


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("NEUROCODEC_")}
    out.update(extra)
    return out


def cli(*args: object, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neurocodec", *map(str, args)], capture_output=True,
                          text=True, timeout=120, env=kw.pop("env", env()), **kw)


def one_line_error(done: subprocess.CompletedProcess, command: str) -> str:
    """The error text after asserting status 1, one stderr line, nothing on stdout, no traceback."""
    assert done.returncode == 1, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr[-3000:]
    assert done.stderr.startswith(f"neurocodec {command}: error: ")
    return done.stderr[len(f"neurocodec {command}: error: "):].strip()


@pytest.fixture
def npz(tmp_path) -> Path:
    path = tmp_path / "rows.npz"
    np.savez(path, x=np.arange(12, dtype=np.float32).reshape(4, 3))
    return path


@pytest.mark.parametrize("where", ["file", "below a file"])
def test_output_that_is_a_regular_file(tmp_path, npz, where):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    output = existing if where == "file" else existing / "ds"
    text = one_line_error(cli("convert", "--input", npz, "--output", output, "--no-progress"), "convert")
    assert text.startswith(f"--output {output} ") and "not a directory" in text
    assert existing.read_text() == "keep me" and sorted(os.listdir(tmp_path)) == ["notes.txt", "rows.npz"]


def test_unusable_cache_flags(tmp_path, npz):
    dataset = tmp_path / "ds"
    assert cli("convert", "--input", npz, "--output", dataset, "--no-progress").returncode == 0
    text = one_line_error(cli("verify", dataset, "--cache-size", "12Q"), "verify")
    assert text.startswith("--cache-size: not a size: '12Q'")
    text = one_line_error(cli("verify", dataset, "--cache-dir", npz), "verify")
    assert text == f"--cache-dir {npz} is an existing file, not a directory"
    assert text == one_line_error(cli("verify", "http://127.0.0.1:9/ds", "--cache-dir", npz), "verify")


def closed_pipe_run(*args: str, unbuffered: str) -> subprocess.CompletedProcess:
    """Run the command with stdout a pipe whose reading end is already closed."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "neurocodec", *args], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120, env=env(PYTHONUNBUFFERED=unbuffered))
    finally:
        os.close(write)


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_a_closed_pipe_ends_quietly(tmp_path, npz, unbuffered):
    dataset = tmp_path / "ds"
    assert cli("convert", "--input", npz, "--output", dataset, "--no-progress").returncode == 0
    for args in (["plugins"], ["info", str(dataset)], ["verify", str(dataset)]):
        done = closed_pipe_run(*args, unbuffered=unbuffered)
        assert (done.returncode, done.stderr) == (1, ""), (args, done.stderr[-3000:])


def test_plugins_into_head_in_a_shell():
    done = subprocess.run(["bash", "-c", f"'{sys.executable}' -m neurocodec plugins | head -1"],
                          capture_output=True, text=True, timeout=120, env=env(PYTHONUNBUFFERED="1"))
    assert done.returncode == 0 and done.stderr == "", done.stderr[-3000:]
    assert len(done.stdout.splitlines()) == 1 and "neurocodec" in done.stdout


LIMITED_RUN = """
import resource, runpy, sys
limit = int(sys.argv[1])
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.argv = ["neurocodec", *sys.argv[2:]]
try:
    runpy.run_module("neurocodec", run_name="__main__", alter_sys=True)
finally:
    if not limit:
        peak = [line for line in open("/proc/self/status") if line.startswith("VmPeak:")][0]
        print(int(peak.split()[1]) * 1024, file=sys.stderr)
"""


def run_limited(limit: int, *args: object) -> subprocess.CompletedProcess:
    """`neurocodec ARGS` with its address space limited to `limit` bytes (0: unlimited, and
    its peak address space printed last on stderr)."""
    return subprocess.run([sys.executable, "-c", LIMITED_RUN, str(limit), *map(str, args)], capture_output=True,
                          text=True, timeout=120, env=env(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1"))


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_out_of_memory_is_one_line_naming_the_dataset(tmp_path):
    """A sample that honestly needs 160 MB, read by a process that may use far less."""
    small, big = tmp_path / "small", tmp_path / "big"
    for path, size in ((small, 100), (big, 160_000_000)):
        with WebDatasetWriter(path, shard_size=2, compression="zstd", fsync=False) as w:
            w.write_sample({"x": np.zeros(size, dtype=np.uint8)})
    baseline = run_limited(0, "verify", small)
    assert baseline.returncode == 0, baseline.stderr[-3000:]
    limit = int(baseline.stderr.split()[-1]) + (64 << 20)
    assert run_limited(limit, "verify", small).returncode == 0  # the limit leaves room to run
    for command in ("verify", "info"):
        done = run_limited(limit, command, big)
        if command == "info":  # the manifest alone: no sample is decoded
            assert done.returncode == 0, done.stderr[-3000:]
            continue
        text = one_line_error(done, command)
        assert text.startswith(f"{big}: "), text
