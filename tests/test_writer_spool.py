"""Shard bytes are hashed and written on a background thread (neurocodec.format.spool): the
SHA-256 in the manifest is the file's, payloads handed over are the ones stored even when the
caller changes its buffer afterwards, and a write failure on the thread still stops the writer
with an error, leaving no shard, temp file or manifest behind."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from neurocodec import Dataset, WebDatasetWriter
from neurocodec.format import spool
from neurocodec.format.checksum import crc32
from neurocodec.format.layout import HOME, MANIFEST_PATH
from neurocodec.format.shardfile import ShardSequence


# 512 KB samples are written on the thread, 7.7 KB ones by the caller (THREADED_SAMPLE_BYTES)
@pytest.mark.parametrize("rows, count, shard_size", [(2000, 60, 25), (30, 3000, 1000)])
def test_sha256_and_crcs_are_the_files_across_many_hand_offs(tmp_path: Path, rows: int, count: int,
                                                             shard_size: int) -> None:
    rng = np.random.default_rng(0)
    values = [rng.standard_normal((rows, 64), dtype=np.float32) for _ in range(count)]
    with WebDatasetWriter(tmp_path / "ds", shard_size=shard_size, fsync=False) as writer:
        for i, value in enumerate(values):
            writer.write_sample({"lfp": value, "id": np.array([i])}, metadata={"i": i})
    manifest = json.loads((tmp_path / "ds" / MANIFEST_PATH).read_text())
    assert len(manifest["shards"]) == 3
    assert manifest["shards"][0]["bytes"] > 2 * spool.FLUSH_BYTES  # several hand-offs per shard
    for entry in manifest["shards"]:
        data = (tmp_path / "ds" / entry["name"]).read_bytes()
        assert len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"]
    with Dataset(tmp_path / "ds", verify="full") as ds:
        assert ds.verify_all() == count
        for i, value in enumerate(values):
            np.testing.assert_array_equal(ds[i]["lfp"], value)


def test_a_mutable_payload_is_stored_as_it_was_when_added(tmp_path: Path) -> None:
    shards = ShardSequence(tmp_path, 10, fsync=False, background=False)
    payload = bytearray(b"first payload")
    shards.add(["sample_000000000.raw.bin"], [payload], [len(payload)])
    payload[:5] = b"XXXXX"  # the caller reuses its buffer before the bytes are written
    (entry,) = shards.finish()
    data = (tmp_path / entry.name).read_bytes()
    assert data[512:512 + 13] == b"first payload" and b"XXXXX" not in data
    rows = np.load(tmp_path / entry.index)
    assert int(rows[0, 0, 3]) == crc32(b"first payload")


@pytest.mark.parametrize("rows", [1000, 100])  # 256 KB samples written on the thread, 25 KB ones not
def test_a_failed_write_stops_the_writer_and_leaves_nothing(tmp_path: Path, rows: int) -> None:
    """A real write failure: the file size limit (RLIMIT_FSIZE) makes write() fail with EFBIG
    once the shard reaches 3 MB (on the background thread for large samples)."""
    script = textwrap.dedent(f"""
        import resource, signal, sys
        import numpy as np
        from neurocodec import WebDatasetWriter
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of the signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (3 << 20, 3 << 20))
        writer = WebDatasetWriter({str(tmp_path / "ds")!r}, shard_size=1000, fsync=True)
        try:
            for i in range(1000):
                writer.write_sample({{"lfp": np.full(({rows}, 64), i, dtype=np.float32)}})
            writer.finalize()
        except OSError as exc:
            print("refused after", i, "samples:", exc.errno, exc.strerror)
            sys.exit(3)
        print("no error")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "refused after" in proc.stdout and "File too large" in proc.stdout
    left = sorted(p.name for p in (tmp_path / "ds").iterdir())
    assert not [name for name in left if name.endswith((".tar", ".idx", ".tmp")) or name == HOME], left
