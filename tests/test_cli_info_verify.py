"""`neurocodec info` checks every shard and index file by its size (a stat each, or one listing
of a URL dataset) and says which are missing or truncated; `neurocodec verify` reads every shard,
reports each bad one and ends with a summary, with a progress bar only on a terminal. Real
datasets damaged on disk, the command run as a real subprocess (and under a real pty)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from neurocodec import Dataset, ShardedDatasetInfo, ShardError, WebDatasetWriter
from neurocodec.cli import main
from neurocodec.dataset.file_check import LONGER, MISSING, NOT_A_FILE, TRUNCATED


def cli(capsys, *args: object) -> tuple[int, str, str]:
    """(status, stdout, stderr) of `neurocodec ARGS`, run in this process (test_info_cli.py runs the
    commands as subprocesses)."""
    capsys.readouterr()
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def write(path: str | Path) -> None:
    """12 samples in 6 shards of 2."""
    with WebDatasetWriter(path, shard_size=2, fsync=False) as w:
        for i in range(12):
            w.write_sample({"x": np.full(64, i, dtype=np.float32)}, metadata={"id": i})


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("info-verify") / "ds"
    write(path)
    return path


@pytest.fixture
def dataset(pristine, tmp_path) -> Path:
    """A copy of the module's dataset, to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "ds"))


def flip_byte_in_a_member(dataset: Path, number: int) -> None:
    with Dataset(dataset) as ds:
        offset, stored = (int(v) for v in ds.shard(number).rows[1, 0, :2])  # its sample 1's first member
        shard = dataset / ds.shards[number].name
    data = bytearray(shard.read_bytes())
    data[offset + stored // 2] ^= 0xFF
    shard.write_bytes(bytes(data))


def test_info_on_a_whole_dataset(pristine):
    files = ShardedDatasetInfo(pristine).get_summary()["files"]
    assert files == {"ok": True, "shards": 6, "bad_shards": [], "problems": [],
                     "text": "all 6 shards and their index files present with the sizes the manifest lists"}


def test_info_names_every_missing_truncated_or_replaced_file(dataset, capsys):
    sizes = {p.name: p.stat().st_size for p in dataset.iterdir()}
    index = ShardedDatasetInfo(dataset).manifest.shards[3].index  # its name depends on the layout
    with open(dataset / "shard_000001.tar", "r+b") as f:
        f.truncate(sizes["shard_000001.tar"] - 512)
    (dataset / index).unlink()
    with open(dataset / "shard_000004.tar", "ab") as f:
        f.write(b"\0" * 512)
    (dataset / "shard_000005.tar").unlink()
    (dataset / "shard_000005.tar").mkdir()
    files = ShardedDatasetInfo(dataset).check_files()
    assert not files.ok and files.shards == 6
    assert files.bad_shards == ("shard_000001.tar", "shard_000003.tar", "shard_000004.tar", "shard_000005.tar")
    assert [(p.name, p.kind, p.found) for p in files.problems] == [
        ("shard_000001.tar", TRUNCATED, sizes["shard_000001.tar"] - 512), (index, MISSING, None),
        ("shard_000004.tar", LONGER, sizes["shard_000004.tar"] + 512), ("shard_000005.tar", NOT_A_FILE, None)]
    assert [p.expected for p in files.problems] == [sizes[p.name] for p in files.problems]

    status, out, err = cli(capsys, "info", dataset)
    assert status == 1
    expected = (f"4 of 6 shards missing or not of the size the manifest lists: shard_000001.tar truncated "
                f"({sizes['shard_000001.tar'] - 512:,} bytes, the manifest lists {sizes['shard_000001.tar']:,}); "
                f"{index} missing; shard_000004.tar longer ({sizes['shard_000004.tar'] + 512:,} bytes, "
                f"the manifest lists {sizes['shard_000004.tar']:,}); shard_000005.tar not a regular file")
    assert f"  files: {expected}\n" in out and "  modalities:" in out  # the whole summary
    assert err == f"neurocodec info: error: {dataset}: {expected}\n"


def test_info_lists_a_url_dataset_once(tmp_path):
    import fsspec

    url = f"memory://neurocodec-{uuid.uuid4().hex[:12]}/ds"
    write(url)
    fs = fsspec.filesystem("memory")
    try:
        assert ShardedDatasetInfo(url).check_files().ok
        root = url[len("memory://"):]
        fs.rm(f"{root}/shard_000002.tar")
        index = ShardedDatasetInfo(url).manifest.shards[4].index
        fs.pipe(f"{root}/{index}", fs.cat(f"{root}/{index}")[:-8])
        summary = ShardedDatasetInfo(url).get_summary()["files"]
        assert summary["bad_shards"] == ["shard_000002.tar", "shard_000004.tar"]
        assert [(p["name"], p["kind"]) for p in summary["problems"]] == [
            ("shard_000002.tar", MISSING), (index, TRUNCATED)]
    finally:
        fs.rm(url[len("memory://"):].split("/")[0], recursive=True)


def test_verify_reports_every_bad_shard(dataset, capsys):
    with open(dataset / "shard_000001.tar", "r+b") as f:
        f.truncate(1024)
    flip_byte_in_a_member(dataset, 3)
    (dataset / "shard_000005.tar").unlink()

    with Dataset(dataset) as ds:
        checks = list(ds.verify_shards())
        assert [c.number for c in checks] == list(range(6))
        assert [c.entry.name for c in checks if not c.ok] == [f"shard_00000{n}.tar" for n in (1, 3, 5)]
        assert all(isinstance(c.error, ShardError) and c.error.shard == c.entry.name for c in checks if not c.ok)
        with pytest.raises(ShardError, match="shard shard_000001.tar: file has 1024 bytes"):
            ds.verify_all()  # as before: the first bad shard raises

    status, out, err = cli(capsys, "verify", dataset)
    assert status == 1
    lines = out.splitlines()
    assert [line.split(":")[1].strip() for line in lines] == [f"shard shard_00000{n}.tar" for n in (1, 3, 5)]
    assert all(line.startswith("bad: ") for line in lines)
    assert "file has 1024 bytes" in lines[0] and "SHA-256" in lines[1] and "cannot open" in lines[2]
    assert err == (f"neurocodec verify: error: {dataset}: 3 of 6 shards bad (6 of 12 samples in them): "
                   "shard_000001.tar, shard_000003.tar, shard_000005.tar\n")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a pty with a window size")
def test_verify_shows_progress_on_a_terminal_only(pristine):
    import fcntl
    import pty
    import struct
    import termios

    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEUROCODEC_")}
    try:
        done = subprocess.run([sys.executable, "-m", "neurocodec", "verify", str(pristine)], stdout=subprocess.PIPE,
                              stderr=terminal, text=True, timeout=120, env=env)
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the terminal's other end is closed and everything was read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(main)
    assert done.returncode == 0
    assert done.stdout == f"ok: 12 samples in 6 shards match the manifest of {pristine}\n"
    assert b"verifying: 100%" in shown  # not on a pipe: test_info_cli.py sees an empty stderr there
