"""One writer per output directory, and outputs that cannot be a directory.

Real processes hold a writer open on a directory (paused between two samples, by a line on
stdin); every other writer (WebDatasetWriter, create_shards_from_arrays, merge_datasets, the NWB
converter, `neurocodec convert`) is refused at once with DatasetLockedError and changes nothing;
racing writers never mix; a killed holder frees the directory; a forked child neither keeps nor
drops its parent's lock; the lock file left by a killed writer is invisible to readers and to
the writers' own checks. An output path that is an existing regular file is a DatasetError
naming it.
"""

from __future__ import annotations

import gc
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from neurocodec import Dataset, ShardedDatasetInfo, WebDatasetWriter, create_shards_from_arrays
from neurocodec.errors import DatasetError, DatasetExistsError, DatasetLockedError
from neurocodec.dataset.merge import merge_datasets
from neurocodec.nwb.converter import NWBToWebDatasetConverter
from neurocodec.storage.lock import LOCK_NAME

pytestmark = pytest.mark.timeout(300)

HOLDER = r'''
import os, sys, time
import numpy as np
from neurocodec import WebDatasetWriter

out, seed, count, pause_at, overwrite = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
w = WebDatasetWriter(out, shard_size=4, fsync=False, overwrite=overwrite == "1")
for i in range(count):
    if i == pause_at:
        print("paused", flush=True)
        sys.stdin.readline()
    w.write_sample({"x": np.full(8, seed * 1000 + i, dtype=np.int64)})
w.finalize()
print("done", flush=True)
'''


def values(seed: int, count: int) -> np.ndarray:
    """What HOLDER writes: sample i is 8 copies of seed * 1000 + i."""
    return np.repeat((seed * 1000 + np.arange(count, dtype=np.int64))[:, None], 8, axis=1)


def write_values(out: Path, seed: int, count: int, **options) -> None:
    create_shards_from_arrays(out, {"x": values(seed, count)}, shard_size=4, fsync=False, progress=False, **options)


def check_values(out: Path, seed: int, count: int) -> None:
    with Dataset(out) as ds:
        assert len(ds) == count and ds.verify_all() == count
        np.testing.assert_array_equal(np.stack([s["x"] for s in ds]), values(seed, count))


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def hold(out: Path, seed: int, count: int, pause_at: int, overwrite: bool = False) -> subprocess.Popen:
    """A writer process paused before sample `pause_at` (send a line to let it go on)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), str(seed), str(count), str(pause_at),
                             "1" if overwrite else "0"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line == "paused\n", proc.communicate(timeout=60)[1]
    return proc


def go_on(proc: subprocess.Popen) -> None:
    out, err = proc.communicate("go\n", timeout=120)
    assert proc.returncode == 0 and out == "done\n", err


def neurocodec(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neurocodec", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def other_writers(out: Path, source: Path, npz: Path) -> dict:
    """Every way to start writing `out`, each a callable."""
    return {
        "writer": lambda: WebDatasetWriter(out),
        "writer overwrite": lambda: WebDatasetWriter(out, overwrite=True),
        "arrays": lambda: write_values(out, 7, 3),
        "arrays overwrite": lambda: write_values(out, 7, 3, overwrite=True),
        "merge overwrite": lambda: merge_datasets([source], out, 4, overwrite=True),
        "nwb converter": lambda: NWBToWebDatasetConverter(out, overwrite=True),
    }


@pytest.mark.multiprocess
@pytest.mark.parametrize("pause_at, existing", [(0, False), (6, False), (6, True)])
def test_a_second_writer_is_refused_at_once_and_changes_nothing(tmp_path, pause_at, existing):
    out, source, npz = tmp_path / "out", tmp_path / "source", tmp_path / "x.npz"
    write_values(source, 3, 5)
    np.savez(npz, x=values(4, 6))
    if existing:
        write_values(out, 2, 9)
    holder = hold(out, 1, 10, pause_at, overwrite=existing)
    try:
        if pause_at > 4:  # its first shard is committed on a background thread: let it land
            committed = out / (".neurocodec-staging" if existing else "") / "shard_000000.tar"
            while not committed.exists():
                time.sleep(0.01)
        before = snapshot(out)
        for name, start in other_writers(out, source, npz).items():
            with pytest.raises(DatasetLockedError, match=re.escape(
                    f"{out} is being written by another writer (process {holder.pid})")):
                start()
            assert snapshot(out) == before, f"{name} changed the directory"
        for extra in ([], ["--overwrite"]):
            done = neurocodec("convert", "--input", npz, "--output", out, "--no-progress", *extra)
            assert done.returncode == 1 and "is being written by another writer" in done.stderr, done.stderr
            assert "Traceback" not in done.stderr
        assert snapshot(out) == before
    finally:
        go_on(holder)
    check_values(out, 1, 10)
    assert LOCK_NAME not in os.listdir(out)


RACER = r'''
import os, sys, time
import numpy as np
from neurocodec import create_shards_from_arrays
from neurocodec.errors import DatasetLockedError

out, seed, start, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
x = np.repeat((seed * 1000 + np.arange(60, dtype=np.int64))[:, None], 8, axis=1)
open(ready, "w").close()
while not os.path.exists(start):
    time.sleep(0.001)
try:
    create_shards_from_arrays(out, {"x": x}, shard_size=3, overwrite=True, fsync=False, progress=False)
except DatasetLockedError as exc:
    print("locked", exc, flush=True)
else:
    print("ok", flush=True)
'''


@pytest.mark.slow
@pytest.mark.multiprocess
def test_racing_writers_never_mix(tmp_path):
    """Four processes overwrite one directory at the same moment, in five directories at once:
    each either writes its whole dataset or is refused as locked; the result is exactly one of them."""
    rounds = range(5)
    procs = {(round_, seed): subprocess.Popen(
        [sys.executable, "-c", RACER, str(tmp_path / f"out{round_}"), str(seed), str(tmp_path / f"start{round_}"),
         str(tmp_path / f"ready{round_}.{seed}")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for round_ in rounds for seed in range(4)}
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{r}.{s}").exists() for r, s in procs) and time.monotonic() < deadline:
        time.sleep(0.02)  # every racer has imported and waits for its start
    for round_ in rounds:
        (tmp_path / f"start{round_}").touch()
    results = {key: proc.communicate(timeout=120) for key, proc in procs.items()}
    for round_ in rounds:
        ok = [seed for seed in range(4) if results[round_, seed][0] == "ok\n"]
        for seed in range(4):
            stdout, err = results[round_, seed]
            assert stdout == "ok\n" or stdout.startswith("locked "), (round_, seed, stdout, err)
            assert procs[round_, seed].returncode == 0, err
        assert ok
        out = tmp_path / f"out{round_}"
        with Dataset(out) as ds:
            winner = int(ds[0]["x"][0]) // 1000
        assert winner in ok
        check_values_shard3(out, winner)
        assert sorted(os.listdir(out)) == sorted([".neurocodec"] + [
            name for n in range(20) for name in (f"shard_{n:06d}.tar", f".shard_{n:06d}.idx")])


def check_values_shard3(out: Path, seed: int) -> None:
    with Dataset(out) as ds:
        assert len(ds) == 60 and ds.verify_all() == 60
        np.testing.assert_array_equal(np.stack([s["x"] for s in ds]), values(seed, 60))


def test_two_writers_in_one_process(tmp_path):
    out = tmp_path / "out"
    first = WebDatasetWriter(out, fsync=False)
    with pytest.raises(DatasetLockedError, match=f"process {os.getpid()}"):
        WebDatasetWriter(out, fsync=False)
    first.write_sample({"x": np.zeros(2)})
    first.finalize()
    assert sorted(os.listdir(out)) == [".neurocodec", ".shard_000000.idx", "shard_000000.tar"]
    abandoned = WebDatasetWriter(out, fsync=False, overwrite=True)
    with pytest.raises(DatasetLockedError):
        WebDatasetWriter(out, fsync=False, overwrite=True)
    del abandoned  # never finalized nor aborted: collecting it releases the lock
    gc.collect()
    write_values(out, 5, 6, overwrite=True)
    check_values(out, 5, 6)
    assert LOCK_NAME not in os.listdir(out)


def test_the_nwb_converter_holds_its_output_until_finalize_or_close(tmp_path):
    out = tmp_path / "out"
    converter = NWBToWebDatasetConverter(out)
    for start in (lambda: WebDatasetWriter(out), lambda: NWBToWebDatasetConverter(out)):
        with pytest.raises(DatasetLockedError, match=f"process {os.getpid()}"):
            start()
    converter.close()
    WebDatasetWriter(out).abort()
    with NWBToWebDatasetConverter(out):
        with pytest.raises(DatasetLockedError):
            write_values(out, 1, 3)
    write_values(out, 1, 3)
    check_values(out, 1, 3)


@pytest.mark.multiprocess
def test_a_killed_holder_frees_the_directory_and_its_lock_file_is_ignored(tmp_path):
    """SIGKILL while replacing a finished dataset: the old dataset, a stale lock file and the
    staging directory remain; readers, `info`, `verify` and the writers' checks see the old
    dataset only; the next writer needs no waiting and no cleanup by hand."""
    out = tmp_path / "out"
    write_values(out, 2, 9)
    holder = hold(out, 1, 10, 6, overwrite=True)
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=60)
    assert LOCK_NAME in os.listdir(out)
    check_values(out, 2, 9)
    assert ShardedDatasetInfo(out).get_summary()["total_samples"] == 9
    info = neurocodec("info", out)
    assert info.returncode == 0 and "samples: 9" in info.stdout, info.stderr
    verify = neurocodec("verify", out)
    assert verify.returncode == 0, verify.stderr
    with pytest.raises(DatasetExistsError):
        WebDatasetWriter(out)
    write_values(out, 4, 5, overwrite=True)
    check_values(out, 4, 5)
    assert sorted(os.listdir(out)) == [".neurocodec", ".shard_000000.idx", ".shard_000001.idx", "shard_000000.tar",
                                       "shard_000001.tar"]


FORKER = r'''
import os, sys, time
import numpy as np
from neurocodec import WebDatasetWriter

w = WebDatasetWriter(sys.argv[1], shard_size=4, fsync=False)
w.write_sample({"x": np.zeros(3)})
pid = os.fork()
if pid == 0:
    sys.exit(0)  # a normal exit: atexit handlers and finalizers run in the child
os.waitpid(pid, 0)
print("child exited", flush=True)
sys.stdin.readline()
pid = os.fork()
if pid == 0:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # let the test see the parent's pipes close when the parent dies
        os.dup2(null, fd)
    time.sleep(120)
    os._exit(0)
print(pid, flush=True)
sys.stdin.readline()
'''


@pytest.mark.multiprocess
def test_a_forked_child_neither_keeps_nor_drops_the_lock(tmp_path):
    out = tmp_path / "out"
    parent = subprocess.Popen([sys.executable, "-c", FORKER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child = None
    try:
        assert parent.stdout.readline() == "child exited\n", parent.communicate(timeout=60)[1]
        with pytest.raises(DatasetLockedError, match=f"process {parent.pid}"):
            WebDatasetWriter(out)  # the child's exit released nothing
        assert LOCK_NAME in os.listdir(out)
        parent.stdin.write("go\n")
        parent.stdin.flush()
        child = int(parent.stdout.readline())
        parent.send_signal(signal.SIGKILL)
        parent.communicate(timeout=60)
        os.kill(child, 0)  # still alive, and it inherited the parent's descriptors
        write_values(out, 6, 5)  # yet the directory is free at once
        check_values(out, 6, 5)
    finally:
        if parent.poll() is None:
            parent.kill()
        if child is not None:
            os.kill(child, signal.SIGKILL)


def test_an_output_path_that_is_a_file_is_a_dataset_error(tmp_path):
    source = tmp_path / "source"
    write_values(source, 1, 3)
    regular = tmp_path / "taken"
    regular.write_text("not a directory")
    for path, message in ((regular, "exists and is not a directory"),
                          (regular / "sub", "cannot create the output directory")):
        attempts = [lambda: WebDatasetWriter(path), lambda: write_values(path, 1, 3, overwrite=True),
                    lambda: merge_datasets([source], path, 4, overwrite=True),
                    lambda: NWBToWebDatasetConverter(path, overwrite=True)]
        for attempt in attempts:
            with pytest.raises(DatasetError, match=f"{re.escape(str(path))}.*{message}"):
                attempt()
    assert regular.read_text() == "not a directory"


def test_a_filesystem_without_flock_writes_unlocked_with_one_warning(tmp_path, monkeypatch):
    # No filesystem here lacks flock (some NFS and FUSE mounts do); flock is made to answer as
    # theirs does, with ENOLCK, and nothing else is replaced.
    import errno
    import fcntl

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with pytest.warns(UserWarning, match="does not support flock") as caught:
        write_values(tmp_path / "out", 7, 5)
    assert len([w for w in caught if "flock" in str(w.message)]) == 1
    monkeypatch.undo()
    check_values(tmp_path / "out", 7, 5)
    assert LOCK_NAME not in os.listdir(tmp_path / "out")
