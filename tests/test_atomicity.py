"""Writer atomicity: killed writers leave directories that readers reject or read exactly.

Real writer processes (fsync on) are killed with SIGKILL: at deterministic points (just before
or just after each rename and fsync the writer makes; the child wraps `os.replace` / `os.fsync`
only to choose the moment, the writer itself runs unchanged) and at random moments. Afterwards:

* with no manifest, `Dataset(...)` raises DatasetError; with one, every sample reads back exactly
  as the writer was given it, and `verify_all()` passes;
* every file under a final shard name is a complete tar whose bytes match its `.idx` (sizes,
  offsets, CRC-32, member names, closing zero blocks, and the samples' values), manifest or not;
* a directory with a manifest is a dataset: a new writer without `overwrite` refuses it
  (DatasetExistsError) and with it replaces it; anything else a killed writer left is not a
  dataset: a new writer without `overwrite` clears it and writes afresh. Either way the rerun
  is byte-identical to a writer that ran alone and leaves no temp, lock or staging file.

A writer that raises inside its `with` block leaves no manifest and no temp files.

The writer processes are forked from one server that has imported numpy and neurocodec and
loaded the plugins (tests/isolated.py); the script runs as `python -c` would run it.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import sys
import tarfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import hostile as h
from isolated import ForkServer, Job
from neurocodec import Dataset, WebDatasetWriter
from neurocodec.errors import DatasetError, DatasetExistsError, SampleError
from neurocodec.format import layout
from neurocodec.storage.lock import LOCK_NAME

pytestmark = pytest.mark.timeout(300)

SAMPLE_SOURCE = '''
import numpy as np

def make_sample(seed, i):
    """Sample `i` of the run with `seed`: arrays, a string, and metadata."""
    rng = np.random.default_rng([seed, i])
    fields = {"spikes": rng.poisson(2, (8, 16)), "lfp": rng.standard_normal((4, 64)).astype("f4"),
              "note": "sample %d of seed %d" % (i, seed)}
    return fields, {"i": i, "seed": seed}
'''

WRITER_SOURCE = r'''
import json, os, signal, sys
from neurocodec import WebDatasetWriter

out, seed, count, shard_size, compression, kill_at, when = sys.argv[1:8]
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
        result = real(*args, **kwargs)
        if n == kill_at and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    setattr(os, name, step)

hook("replace")
hook("fsync")
writer = WebDatasetWriter(out, shard_size=shard_size, compression=compression, fsync=True)
for i in range(count):
    writer.write_sample(*make_sample(seed, i))
    print(i, flush=True)
writer.finalize()
print("finalized", flush=True)
print(json.dumps(steps), flush=True)
'''

_namespace: dict[str, Any] = {}
exec(SAMPLE_SOURCE, _namespace)
make_sample = _namespace["make_sample"]
TEMP = re.compile(r"\..*\.tmp")
SHARD = re.compile(r"shard_(\d{6})\.tar")
INDEX = re.compile(r"\.shard_(\d{6})\.idx")
FIELDS = ("lfp", "note", "spikes", "metadata")  # the manifest's order: sorted, metadata last
EXT = {"lfp": "npy", "note": "txt", "spikes": "npy", "metadata": "json"}


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
    srv = ForkServer("numpy", "neurocodec", "test_atomicity", warmup="test_atomicity:warm")
    yield srv
    srv.close()


def start_writer(server: ForkServer, out: Path, seed: int, count: int, shard_size: int, compression: str,
                 kill_at: int = 0, when: str = "never") -> Job:
    argv = [str(out), str(seed), str(count), str(shard_size), compression, str(kill_at), when]
    return server.start("test_atomicity:writer_process", argv=argv, headroom=None, watchdog=120)


def same(got: dict[str, Any], fields: dict[str, Any], metadata: dict[str, Any]) -> bool:
    if got["metadata"] != metadata or set(got) != {"__key__", "metadata", *fields}:
        return False
    for name, value in fields.items():
        if isinstance(value, np.ndarray):
            if got[name].dtype != value.dtype or got[name].tobytes() != value.tobytes():
                return False
        elif got[name] != value:
            return False
    return True


def check_complete_shard(root: Path, name: str, seed: int, shard_size: int, compression: str) -> int:
    """Assert `name` is a complete shard matching its index and the writer's samples; return
    its sample count. Works without a manifest: the index is the only other witness."""
    number = int(SHARD.fullmatch(name)[1])
    index = root / f".shard_{number:06d}.idx"
    assert index.is_file(), f"{name} is in place but its index is not (the index is renamed first)"
    rows = np.load(index, allow_pickle=False)
    assert rows.dtype == np.dtype("<u8") and rows.ndim == 3 and rows.shape[1:] == (len(FIELDS), 4)
    data = (root / name).read_bytes()
    end = 0
    with tarfile.open(root / name) as tf:  # our own writer's output: tarfile is a fine witness here
        members = tf.getmembers()
    assert len(members) == rows.shape[0] * len(FIELDS), f"{name}: tar and index disagree on members"
    flat = rows.reshape(-1, 4).tolist()
    for position, (info, (offset, stored, raw, crc)) in enumerate(zip(members, flat)):
        local, column = divmod(position, len(FIELDS))
        sample = number * shard_size + local
        field = FIELDS[column]
        suffix = {"none": "", "zstd": ".zst", "gz": ".gz", "bz2": ".bz2", "xz": ".xz"}[compression]
        assert info.name == f"sample_{sample + 1:09d}.{field}.{EXT[field]}{suffix}"
        assert info.isreg() and info.offset_data == offset and info.size == stored
        payload = data[offset:offset + stored]
        assert zlib.crc32(payload) == crc, f"{name}: {info.name} does not match its CRC-32"
        raw_bytes = h.decompress(compression, payload)
        assert len(raw_bytes) == raw
        fields, metadata = make_sample(seed, sample)
        if field == "metadata":
            assert json.loads(raw_bytes) == metadata
        elif field == "note":
            assert raw_bytes.decode() == fields["note"]
        else:
            value = np.load(io.BytesIO(raw_bytes), allow_pickle=False)
            np.testing.assert_array_equal(value.astype(fields[field].dtype), fields[field])
        end = offset + stored + (-stored % 512)
    assert data[end:] == bytes(1024), f"{name}: does not end right after its last member"
    return rows.shape[0]


def check_debris(root: Path, seed: int, count: int, shard_size: int, compression: str) -> str:
    """Check a killed writer's directory; return 'complete', 'partial' or 'empty'."""
    if not root.exists():
        return "empty"
    names = sorted(p.name for p in root.iterdir())
    for name in names:
        assert (name == layout.HOME or SHARD.fullmatch(name) or INDEX.fullmatch(name)
                or TEMP.fullmatch(name) or name == LOCK_NAME), f"unexpected file {name}"
        if SHARD.fullmatch(name):
            check_complete_shard(root, name, seed, shard_size, compression)
        if INDEX.fullmatch(name):  # renamed into place whole: always a valid NPY
            np.load(root / name, allow_pickle=False)
    if not (root / h.MANIFEST).is_file():
        with pytest.raises(DatasetError, match="has no .neurocodec/dataset_metadata.json"):
            Dataset(root)
        return "partial" if set(names) - {LOCK_NAME, layout.HOME} else "empty"
    with Dataset(root) as ds:
        assert len(ds) == count
        for i, got in enumerate(ds):
            assert same(got, *make_sample(seed, i)), f"sample {i} differs"
        assert ds.verify_all() == count
    return "complete"


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file of a directory and its subdirectories (hidden ones too) by path, with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write_alone(root: Path, seed: int, count: int, shard_size: int, compression: str, **options) -> None:
    with WebDatasetWriter(root, shard_size=shard_size, compression=compression, **options) as w:
        for i in range(count):
            w.write_sample(*make_sample(seed, i))


def check_rerun(root: Path, seed: int, count: int, shard_size: int, compression: str) -> None:
    """A manifest is refused without overwrite and replaced with it; other debris is cleared by a
    writer without overwrite. The result is byte-identical to a writer run alone in an empty
    directory, and reads back."""
    complete = (root / h.MANIFEST).exists()
    if complete:
        with pytest.raises(DatasetExistsError):
            WebDatasetWriter(root, shard_size=shard_size, compression=compression)
    write_alone(root, seed + 1, count, shard_size, compression, overwrite=complete)
    names = sorted(p.name for p in root.iterdir())
    shards = -(-count // shard_size)
    assert names == sorted([layout.HOME] + [name for n in range(shards)
                                            for name in (f"shard_{n:06d}.tar", f".shard_{n:06d}.idx")])
    assert sorted(p.name for p in (root / layout.HOME).iterdir()) == [layout.MANIFEST]
    alone = root.with_name(root.name + "-alone")
    write_alone(alone, seed + 1, count, shard_size, compression, fsync=False)  # the same bytes
    assert snapshot(root) == snapshot(alone)
    with Dataset(root) as ds:
        assert len(ds) == count and all(same(got, *make_sample(seed + 1, i)) for i, got in enumerate(ds))


def full_run_steps(server: ForkServer, tmp_path: Path, count: int, shard_size: int, compression: str) -> list[str]:
    """The renames and fsyncs a complete writer run makes, in order."""
    done = start_writer(server, tmp_path / "reference", 0, count, shard_size, compression).wait()
    assert not done.crashed and done.raised is None, done.explain()
    return json.loads(done.stdout.splitlines()[-1])


def kill_at_step(server: ForkServer, tmp_path: Path, n: int, when: str, *, count: int, shard_size: int,
                 compression: str) -> str:
    root = tmp_path / f"kill-{when}-{n}"
    done = start_writer(server, root, n, count, shard_size, compression, kill_at=n, when=when).wait()
    assert done.signal == "SIGKILL", f"step {n} {when}: the writer was not killed: {done.explain()}"
    state = check_debris(root, n, count, shard_size, compression)
    check_rerun(root, n, count, shard_size, compression)
    return state


def test_writer_steps_are_what_the_kill_points_assume(server, tmp_path):
    """A full run (no kill): index renamed before its tar, manifest renamed last, all fsynced."""
    steps = full_run_steps(server, tmp_path, 5, 2, "none")
    renames = [s.split()[-1] for s in steps if s.startswith("replace")]
    assert renames == [".shard_000000.idx", "shard_000000.tar", ".shard_000001.idx", "shard_000001.tar",
                       ".shard_000002.idx", "shard_000002.tar", layout.MANIFEST]
    for i, step in enumerate(steps):
        if step.startswith("replace"):
            source = step.split()[1]
            assert TEMP.fullmatch(source), f"{step}: renamed from a non-temp name"
            assert "fsync" in steps[:i], f"{step}: nothing was fsynced before it"
    assert steps[-3].endswith(" " + layout.MANIFEST) and steps[-2:] == ["fsync", "fsync"], \
        ".neurocodec/ and the directory not fsynced last"


def test_kill_at_the_critical_steps(server, tmp_path):
    """Kills just before and after the renames that matter: first index, first tar, manifest."""
    compression = "zstd"
    steps = full_run_steps(server, tmp_path, 5, 2, compression)
    critical = [i + 1 for i, s in enumerate(steps)
                if s.startswith("replace") and s.split()[-1] in (".shard_000000.idx", "shard_000000.tar", layout.MANIFEST)]
    states = set()
    for n in critical:
        for when in ("before", "after"):
            states.add(kill_at_step(server, tmp_path, n, when, count=5, shard_size=2, compression=compression))
    assert states == {"partial", "complete"}


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["none", "gz"])
def test_kill_before_and_after_every_step(server, tmp_path, compression):
    """Every rename and fsync of a run, killed just before and just after."""
    steps = full_run_steps(server, tmp_path, 7, 3, compression)
    states = [kill_at_step(server, tmp_path, n, when, count=7, shard_size=3, compression=compression)
              for n in range(1, len(steps) + 1) for when in ("before", "after")]
    assert states[0] in ("partial", "empty") and states[-1] == "complete"
    # Killed before the manifest's rename: no dataset; after it: the whole dataset.
    manifest_step = next(i for i, s in enumerate(steps) if s.endswith(" " + layout.MANIFEST))
    assert states[2 * manifest_step] == "partial" and states[2 * manifest_step + 1] == "complete"


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(8))
def test_sigkill_at_random_moments(server, tmp_path, seed):
    """SIGKILL after a random number of samples plus a random delay (several per seed)."""
    rng = random.Random(seed)
    count, shard_size = 120, 7
    compression = ("none", "zstd", "gz", "xz")[seed % 4]
    states = []
    for attempt in range(4):
        root = tmp_path / f"run{attempt}"
        job = start_writer(server, root, seed * 10 + attempt, count, shard_size, compression)
        target = rng.randint(0, count + 1)  # count: during finalize; count+1: after it
        while printed(job) < target and job.alive():
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.02))
        if job.alive():
            os.kill(job.pid, signal.SIGKILL)
        done = job.wait()
        assert done.signal == "SIGKILL" or (not done.crashed and done.raised is None), done.explain()
        states.append(check_debris(root, seed * 10 + attempt, count, shard_size, compression))
        check_rerun(root, seed * 10 + attempt, count, shard_size, compression)
    assert set(states) <= {"empty", "partial", "complete"}


def printed(job: Job) -> int:
    """Lines the job's process has printed so far (each print is flushed)."""
    try:
        return job.stdout_path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.iterdir() if TEMP.fullmatch(p.name)]


@pytest.mark.parametrize("raise_after", [0, 3, 4, 9])
@pytest.mark.parametrize("exception", [RuntimeError, KeyboardInterrupt])
def test_exception_inside_with_leaves_no_manifest_and_no_temp_files(tmp_path, raise_after, exception):
    root = tmp_path / "ds"
    with pytest.raises(exception):
        with WebDatasetWriter(root, shard_size=4, compression="zstd") as writer:
            for i in range(raise_after):
                writer.write_sample(*make_sample(5, i))
            raise exception("stop")
    assert not (root / h.MANIFEST).exists() and no_temp_files(root)
    with pytest.raises(DatasetError):
        Dataset(root)
    for name in (p.name for p in root.iterdir()):  # the shards finished before the error are whole
        if SHARD.fullmatch(name):
            assert check_complete_shard(root, name, 5, 4, "zstd") == 4
    check_rerun(root, 5, 6, 4, "zstd")


def test_invalid_sample_inside_with_leaves_no_manifest_and_no_temp_files(tmp_path):
    root = tmp_path / "ds"
    with pytest.raises(SampleError):
        with WebDatasetWriter(root, shard_size=4) as writer:
            for i in range(6):
                writer.write_sample(*make_sample(6, i))
            writer.write_sample({"spikes": np.zeros(3), "extra": 1})  # other fields: refused
    assert not (root / h.MANIFEST).exists() and no_temp_files(root)
    with pytest.raises(DatasetError):
        Dataset(root)


@pytest.mark.parametrize("blocked", [0, 2])
def test_a_shard_that_cannot_be_committed_fails_the_writer_cleanly(tmp_path, blocked):
    """Shards are committed (fsync, hash, rename) on a background thread while the next one is
    written; a commit that fails (here: a directory where the shard must be renamed to) raises
    from the writer at the next shard or at finalize, and the run ends as any failed run does:
    no manifest, no temp files, the shards committed before it whole."""
    root = tmp_path / "ds"
    writer = WebDatasetWriter(root, shard_size=3, compression="zstd")
    (root / f"shard_{blocked:06d}.tar").mkdir()
    with pytest.raises(IsADirectoryError):
        for i in range(10):
            writer.write_sample(*make_sample(5, i))
        writer.finalize()
    with pytest.raises(Exception):
        writer.write_sample(*make_sample(5, 0))            # the writer is closed after failing
    assert not (root / h.MANIFEST).exists() and no_temp_files(root)
    for number in range(blocked):
        assert check_complete_shard(root, f"shard_{number:06d}.tar", 5, 3, "zstd") == 3
