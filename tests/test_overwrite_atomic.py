"""Overwriting is atomic, and an interrupted write never blocks the next one.

Real writer processes replace a finished dataset (`overwrite=True`; WebDatasetWriter and
merge_datasets) and are killed with SIGKILL just before or just after each rename, link,
unlink, rmdir and fsync they make (the child wraps those `os` functions only to choose the
moment), and at random moments. After every kill the directory holds a complete dataset that
reads back exactly (values compared with numpy, `verify_all()`): the old one when killed before
the new manifest's rename, the new one after it; a rerun is byte-identical to an uninterrupted
run and to a first write into an empty directory, and leaves no staging, temp or lock file.

`neurocodec convert` on an .npz, interrupted by Ctrl-C (SIGINT) or SIGKILL: a first conversion
leaves no dataset (as `neurocodec info` says) and the rerun, without `--overwrite`, writes the
same bytes as an uninterrupted run; an `--overwrite` conversion leaves the old dataset whole
(`info`, `verify`, values).

The writer processes are forked from one server that has imported numpy and neurocodec and
loaded the plugins (tests/isolated.py): the script runs as `python -c` would run it, and a
fresh interpreter per kill (about 250 of them) would spend most of the module's time importing.

At a URL (memory://), a failure at every store operation of a replacement leaves the old
dataset or the new one, and the rerun gives the final objects of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from neurocodec import Dataset, WebDatasetWriter
from neurocodec.errors import DatasetExistsError
from neurocodec.dataset.merge import merge_datasets
from neurocodec.storage.cache import ShardCache
from isolated import ForkServer, Job, Outcome
from test_atomicity import SAMPLE_SOURCE  # the same samples as the plain writer kill tests

pytestmark = pytest.mark.timeout(600)
MANIFEST = "dataset_metadata.json"  # in .neurocodec/ (docs/format.md, section 2); the steps log base names

WRITER_SOURCE = r'''
import json, os, signal, sys
from neurocodec import WebDatasetWriter
from neurocodec.dataset.merge import merge_datasets

kind, out, seed, count, shard_size, compression, kill_at, when, source = sys.argv[1:10]
seed, count, shard_size, kill_at = int(seed), int(count), int(shard_size), int(kill_at)
steps = []

def hook(name):
    real = getattr(os, name)
    def step(*args, **kwargs):
        names = [os.path.basename(str(a)) for a in args if not isinstance(a, int)]
        steps.append(" ".join([name] + names))
        n = len(steps)
        if n == kill_at and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            return real(*args, **kwargs)
        finally:  # also after a call that raised (unlink of a missing temp file)
            if n == kill_at and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
    setattr(os, name, step)

for name in ("replace", "fsync", "link", "unlink", "rmdir"):
    hook(name)
if kind == "writer":
    writer = WebDatasetWriter(out, shard_size=shard_size, compression=compression, overwrite=True)
    for i in range(count):
        writer.write_sample(*make_sample(seed, i))
        print(i, flush=True)
    writer.finalize()
else:
    merge_datasets([source], out, shard_size, overwrite=True)
print("finalized", flush=True)
print(json.dumps(steps), flush=True)
'''

_namespace: dict[str, Any] = {}
exec(SAMPLE_SOURCE, _namespace)
make_sample = _namespace["make_sample"]


def writer_process(argv: list[str]) -> None:
    """The writer script, run as `python -c SCRIPT *argv` runs it (in a job of `server`)."""
    sys.argv = ["-c", *argv]
    exec(compile(SAMPLE_SOURCE + WRITER_SOURCE, "<writer>", "exec"), {"__name__": "__main__"})


def warm() -> None:
    """In the server: load the plugins (each job would otherwise load them again)."""
    from neurocodec.plugin.manager import default_registry

    default_registry()


@pytest.fixture(scope="module")
def server():
    """Forks the writer processes."""
    srv = ForkServer("numpy", "neurocodec", "neurocodec.dataset.merge", "test_overwrite_atomic",
                     warmup="test_overwrite_atomic:warm")
    yield srv
    srv.close()


def write(root: Path, seed: int, count: int, shard_size: int, compression: str = "zstd", **options) -> None:
    with WebDatasetWriter(root, shard_size=shard_size, compression=compression, **options) as w:
        for i in range(count):
            w.write_sample(*make_sample(seed, i))


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root`, hidden ones and subdirectories' too, with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def same(got: dict[str, Any], fields: dict[str, Any], metadata: dict[str, Any]) -> bool:
    if got["metadata"] != metadata or set(got) != {"__key__", "metadata", *fields}:
        return False
    for name, value in fields.items():
        if isinstance(value, np.ndarray):
            if got[name].dtype != value.dtype or not np.array_equal(got[name], value):
                return False
        elif got[name] != value:
            return False
    return True


def which(root: Path, runs: dict[str, tuple[int, int]]) -> str:
    """The name of the run (seed, count) whose samples `root` holds exactly; fails otherwise."""
    assert (root / ".neurocodec" / MANIFEST).is_file(), "no dataset at all"
    with Dataset(root) as ds:
        got = list(ds)
        assert ds.verify_all() == len(got)
    for name, (seed, count) in runs.items():
        if len(got) == count and all(same(g, *make_sample(seed, i)) for i, g in enumerate(got)):
            return name
    raise AssertionError(f"{root} holds {len(got)} samples that are neither dataset")


class Case:
    """An old dataset replaced by a new one: seeds, counts and shard sizes, and the references."""

    OLD = (1, 11, 3)  # (seed, count, shard_size): 4 old shards

    def __init__(self, server: ForkServer, tmp_path: Path, kind: str, compression: str = "zstd",
                 new: tuple = (2, 7, 4)) -> None:
        self.server, self.tmp, self.kind, self.compression, self.NEW = server, tmp_path, kind, compression, new
        self.source = tmp_path / "source"  # what merge copies: the new samples
        write(self.source, *self.NEW, compression)
        self.fresh = tmp_path / "fresh"  # the new dataset written into an empty directory
        if kind == "writer":
            write(self.fresh, *self.NEW, compression)
        else:
            merge_datasets([self.source], self.fresh, self.NEW[2])
        reference = self.old(tmp_path / "reference")
        done = self.start(reference).wait()
        assert not done.crashed and done.raised is None, done.explain()
        self.steps: list[str] = json.loads(done.stdout.splitlines()[-1])
        self.reference = snapshot(reference)
        assert self.reference == snapshot(self.fresh), "replacing differs from a first write"

    def old(self, root: Path) -> Path:
        """The old dataset written at `root` (without fsync: a kill does not drop the page cache,
        and the bytes are the same)."""
        write(root, *self.OLD, self.compression, fsync=False)
        return root

    def start(self, root: Path, kill_at: int = 0, when: str = "never") -> Job:
        """The writer process replacing the dataset at `root` (forked; see `Job`)."""
        seed, count, shard_size = self.NEW
        argv = [self.kind, str(root), str(seed), str(count), str(shard_size), self.compression, str(kill_at), when,
                str(self.source)]
        return self.server.start("test_overwrite_atomic:writer_process", argv=argv, headroom=None, watchdog=120)

    def switch(self) -> int:
        """1-based number of the step that renames the first new manifest into place."""
        return next(i + 1 for i, s in enumerate(self.steps) if s.startswith("replace") and s.endswith(" " + MANIFEST))

    def kill_at(self, n: int, when: str) -> str:
        root = self.old(self.tmp / f"kill-{when}-{n}")
        done: Outcome = self.start(root, n, when).wait()
        assert done.signal == "SIGKILL", f"step {n} {when}: not killed: {done.explain()}"
        state = which(root, {"old": self.OLD[:2], "new": self.NEW[:2]})
        before_switch = n < self.switch() or (n == self.switch() and when == "before")
        assert state == ("old" if before_switch else "new"), f"step {n} ({self.steps[n - 1]}) {when}: {state}"
        self.rerun(root)
        return state

    def rerun(self, root: Path) -> None:
        with pytest.raises(DatasetExistsError):
            WebDatasetWriter(root)
        if self.kind == "writer":
            write(root, *self.NEW, self.compression, overwrite=True)
        else:
            merge_datasets([self.source], root, self.NEW[2], overwrite=True)
        assert snapshot(root) == self.reference


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("kind", ["writer", "merge"])
def test_kill_around_the_switch(server, tmp_path, kind):
    """Kills at the steps that matter: staging (for merge, the source's shards linked in), the
    stand-in renames, both manifests, the links back to the final names, the removals."""
    case = Case(server, tmp_path, kind)
    steps = case.steps
    switch = case.switch()
    final = next(i + 1 for i in range(switch, len(steps)) if steps[i].endswith(" " + MANIFEST))
    first_move = next(i + 1 for i, s in enumerate(steps) if s.startswith("replace") and " shard_1000000000." in s)
    staged_links = [i + 1 for i, s in enumerate(steps[:switch]) if s.startswith("link")]
    first_link = next(i + 1 for i in range(switch, len(steps)) if steps[i].startswith("link"))
    points = [(first_move, "before"), (switch, "before"), (switch, "after"), (first_link, "after"),
              (final, "before"), (final, "after"), (len(steps), "before")]
    expected = ["old", "old", "new", "new", "new", "new", "new"]
    if kind == "merge":  # merge takes the source's shards over by hard links while staging
        assert staged_links
        points, expected = [(staged_links[0], "after"), *points], ["old", *expected]
    states = [case.kill_at(n, when) for n, when in points]
    assert states == expected


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("kind", ["writer", "merge"])
def test_kill_before_and_after_every_step(server, tmp_path, kind):
    """Every step, including merge's hard links of the source's shards while staging: before the
    new manifest's switch the old dataset, after it the new one, and a rerun writes it whole."""
    case = Case(server, tmp_path, kind, "gz")
    states = [case.kill_at(n, when) for n in range(1, len(case.steps) + 1) for when in ("before", "after")]
    assert states[0] == "old" and states[-1] == "new"


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("seed", range(4))
def test_sigkill_at_random_moments(server, tmp_path, seed):
    """SIGKILL after a random number of samples plus a random delay, while a larger dataset
    replaces an old one: killed before the last sample was written, the old dataset is whole;
    later, old or new."""
    rng = random.Random(seed)
    compression = ("none", "zstd", "gz", "xz")[seed]
    case = Case(server, tmp_path, "writer", compression, new=(2, 90, 7))
    count = case.NEW[1]
    for attempt in range(3):
        root = case.old(tmp_path / f"run{attempt}")
        job = case.start(root)
        target = rng.randint(0, count + 1)  # count: during finalize; count + 1: after it
        while printed(job) < target and job.alive():
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.02))
        if job.alive():
            os.kill(job.pid, signal.SIGKILL)
        done = job.wait()
        assert done.signal == "SIGKILL" or (not done.crashed and done.raised is None), done.explain()
        written = sum(line.strip().isdigit() for line in done.stdout.splitlines())
        state = which(root, {"old": case.OLD[:2], "new": case.NEW[:2]})
        if written < count:  # it died before finalize() began
            assert state == "old"
        case.rerun(root)


def printed(job: Job) -> int:
    """Lines the job's process has printed so far (each print is flushed)."""
    try:
        return job.stdout_path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_merging_a_dataset_into_itself_replaces_it_whole(tmp_path):
    """The old dataset stays untouched until the new one is complete, so it may be a source."""
    first, second = tmp_path / "first", tmp_path / "second"
    write(first, 1, 5, 2)
    write(second, 2, 4, 3)
    merge_datasets([first, second], first, 3, overwrite=True)
    want = [make_sample(1, i) for i in range(5)] + [make_sample(2, i) for i in range(4)]
    with Dataset(first) as ds:
        assert ds.verify_all() == 9
        assert all(same(got, *w) for got, w in zip(ds, want, strict=True))
    assert sorted(p.name for p in first.iterdir()) == [".neurocodec"] + [
        f".shard_{n:06d}.idx" for n in range(3)] + [f"shard_{n:06d}.tar" for n in range(3)]


# -- neurocodec convert on .npz, interrupted ------------------------------------------------------
PAUSED_CLI = r'''
import faulthandler, signal, sys, time
import neurocodec.dataset.writer as writer

# Ctrl-C as a shell delivers it, whatever this process inherited from the test process; and its
# stacks on SIGUSR1, for a clean-up that does not end (see interrupt_convert).
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
faulthandler.register(signal.SIGUSR1, all_threads=True)

pause_at = int(sys.argv[1])
real = writer.WebDatasetWriter._write  # every sample goes through it (write_sample and the npz path)

def write(self, *args, **kwargs):
    if self.samples_written == pause_at:
        print("paused", flush=True)
        time.sleep(300)
    return real(self, *args, **kwargs)

writer.WebDatasetWriter._write = write
from neurocodec.cli import main
sys.exit(main(sys.argv[2:]))
'''


def neurocodec(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neurocodec", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def npz(path: Path, seed: int, count: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {"lfp": rng.standard_normal((count, 4, 32)).astype(np.float32),
              "spikes": rng.poisson(1, (count, 8, 10)).astype(np.int16)}
    np.savez(path, **arrays)
    return arrays


def convert_args(source: Path, out: Path, *extra: str) -> list[str]:
    return ["convert", "--input", str(source), "--output", str(out), "--shard-size", "10", "--no-progress", *extra]


def interrupt_convert(args: list[str], signum: int) -> None:
    proc = subprocess.Popen([sys.executable, "-c", PAUSED_CLI, "25", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "paused\n", proc.communicate(timeout=60)[1]
    proc.send_signal(signum)
    # Generous: the interrupted writer's clean-up fsyncs, which waits behind every dirty page of
    # the machine (a full suite on a busy 2-core machine once took over 60 s here).
    try:
        _out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)  # its stacks to stderr, then the failure shows where it waits
        time.sleep(1)
        proc.kill()
        pytest.fail(f"the interrupted writer did not exit within 180 s; its stacks:\n{proc.communicate()[1]}")
    assert proc.returncode != 0, err


def check_arrays(out: Path, arrays: dict[str, np.ndarray]) -> None:
    with Dataset(out) as ds:
        assert len(ds) == len(arrays["lfp"]) and ds.verify_all() == len(ds)
        for name, array in arrays.items():
            np.testing.assert_array_equal(np.stack([s[name] for s in ds]), array)


@pytest.mark.multiprocess
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_npz_conversion_is_no_dataset_and_reruns_without_overwrite(tmp_path, signum):
    source, out, alone = tmp_path / "rows.npz", tmp_path / "out", tmp_path / "alone"
    arrays = npz(source, 0, 60)
    assert neurocodec(*convert_args(source, alone)).returncode == 0
    interrupt_convert(convert_args(source, out), signum)
    assert any(p.name.startswith("shard_") for p in out.iterdir())  # finished shards were left
    info = neurocodec("info", out)
    assert info.returncode == 1 and "not a neurocodec dataset" in info.stderr, info.stderr
    rerun = neurocodec(*convert_args(source, out))
    assert rerun.returncode == 0, rerun.stderr
    assert snapshot(out) == snapshot(alone)
    check_arrays(out, arrays)
    again = neurocodec(*convert_args(source, out))  # a finished dataset is still refused
    assert again.returncode == 1 and "already holds a dataset" in again.stderr


@pytest.mark.multiprocess
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_npz_overwrite_keeps_the_old_dataset(tmp_path, signum):
    old_npz, new_npz, out, alone = tmp_path / "old.npz", tmp_path / "new.npz", tmp_path / "out", tmp_path / "alone"
    old, new = npz(old_npz, 1, 45), npz(new_npz, 2, 60)
    assert neurocodec(*convert_args(old_npz, out)).returncode == 0
    assert neurocodec(*convert_args(new_npz, alone)).returncode == 0
    interrupt_convert(convert_args(new_npz, out, "--overwrite"), signum)
    info = neurocodec("info", out)
    assert info.returncode == 0 and "samples: 45" in info.stdout, info.stderr
    verify = neurocodec("verify", out)
    assert verify.returncode == 0, verify.stderr
    check_arrays(out, old)
    rerun = neurocodec(*convert_args(new_npz, out, "--overwrite"))
    assert rerun.returncode == 0, rerun.stderr
    assert snapshot(out) == snapshot(alone)
    check_arrays(out, new)


# -- a URL ------------------------------------------------------------------------------------------
class Interrupt(BaseException):
    """Stands for Ctrl-C at one store operation."""


def test_replacing_a_dataset_at_a_url_is_atomic(tmp_path, monkeypatch):
    """A failure at each store operation of a replacement (memory://): the old dataset or the
    new one is there, whole; the rerun ends with exactly the objects of an uninterrupted run."""
    import fsspec

    fs = fsspec.filesystem("memory")
    calls: list[str] = []
    fail_at = [0]
    for op in ("put_file", "cp_file", "rm_file", "mv"):
        real = getattr(fs, op)

        def wrapped(*args, _real=real, _op=op, **kwargs):
            calls.append(f"{_op} {str(args[-1]).rsplit('/', 1)[-1]}")
            if len(calls) == fail_at[0]:
                raise Interrupt(calls[-1])
            return _real(*args, **kwargs)
        monkeypatch.setattr(fs, op, wrapped)

    def objects(url: str) -> dict[str, bytes]:
        root = url[len("memory://"):]
        return {p[p.index(root) + len(root):]: fs.cat_file(p) for p in sorted(fs.find(root))}

    def old_url() -> str:
        url = f"memory://neurocodec-{uuid.uuid4().hex[:12]}/ds"
        write(url, 1, 11, 3, fsync=False)
        return url

    fresh = f"memory://neurocodec-{uuid.uuid4().hex[:12]}/fresh"
    write(fresh, 2, 7, 4, fsync=False)
    url = old_url()
    calls.clear()
    write(url, 2, 7, 4, fsync=False, overwrite=True)
    steps, reference = list(calls), objects(url)
    assert reference == objects(fresh)
    switch = next(i + 1 for i, s in enumerate(steps) if s == f"put_file {MANIFEST}")
    for n in range(1, len(steps) + 1):
        url = old_url()
        calls.clear()
        fail_at[0] = n
        with pytest.raises(Interrupt):
            write(url, 2, 7, 4, fsync=False, overwrite=True)
        fail_at[0] = 0
        with Dataset(url, cache=ShardCache(tmp_path / f"cache{n}")) as ds:
            got = list(ds)
            assert ds.verify_all() == len(got)
        seed, count = (1, 11) if n <= switch else (2, 7)
        assert len(got) == count and all(same(g, *make_sample(seed, i)) for i, g in enumerate(got)), steps[n - 1]
        write(url, 2, 7, 4, fsync=False, overwrite=True)
        assert objects(url) == reference


@pytest.mark.slow
def test_replacing_a_dataset_on_s3_never_removes_the_manifest(tmp_path):
    """On S3 (moto on loopback, requests logged by a proxy): the new shards go up under stand-in
    names, the manifest is replaced (never deleted) twice, and objects are deleted only once
    the final manifest is in place; the result is the objects of a first write."""
    import fsspec

    from storage_servers import BUCKET, FaultProxy, moto_server, s3_options

    with moto_server() as endpoint:
        options = s3_options(endpoint)
        url, fresh = (f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/{name}" for name in ("ds", "fresh"))
        write(url, 1, 11, 3, fsync=False, storage_options=options)
        write(fresh, 2, 7, 4, fsync=False, storage_options=options)
        with FaultProxy(endpoint) as proxy:
            write(url, 2, 7, 4, fsync=False, overwrite=True, storage_options=s3_options(proxy.endpoint))
            log = [(method, path.split("?")[0].rsplit("/", 1)[-1]) for _n, method, path, _action in proxy.log
                   if method in ("PUT", "POST", "DELETE")]
        manifest_puts = [i for i, entry in enumerate(log) if entry == ("PUT", MANIFEST)]
        assert len(manifest_puts) == 2, log
        switch, final = manifest_puts
        assert ("DELETE", MANIFEST) not in log
        assert {name for method, name in log[:switch] if method == "PUT"} == {
            name for n in (1000000000, 1000000001) for name in (f"shard_{n}.tar", f".shard_{n}.idx")}, log
        assert {name for method, name in log[switch + 1:final]} == {
            name for n in (0, 1) for name in (f"shard_00000{n}.tar", f".shard_00000{n}.idx")}, log
        removed = [i for i, (method, _name) in enumerate(log) if method in ("DELETE", "POST")]
        assert removed and min(removed) > final, log
        fs = fsspec.filesystem("s3", **options)

        def objects(u: str) -> dict[str, bytes]:
            fs.invalidate_cache()
            root = u[len("s3://"):]
            return {p[p.index(root) + len(root):]: fs.cat_file(p) for p in sorted(fs.find(root))}

        assert objects(url) == objects(fresh)
        with Dataset(url, storage_options=options, cache=ShardCache(tmp_path / "cache")) as ds:
            assert ds.verify_all() == 7
            assert all(same(got, *make_sample(2, i)) for i, got in enumerate(ds))
