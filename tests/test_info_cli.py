"""`ShardedDatasetInfo` and the `neurocodec` command (run as real subprocesses)."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neurocodec import Dataset, DatasetError, ShardedDatasetInfo, WebDatasetWriter

NO_MANIFEST = r"has no (\.neurocodec/)?dataset_metadata\.json"  # either layout (docs/format.md)
SCRIPT = shutil.which("neurocodec", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))


@pytest.fixture
def dataset(tmp_path, rng) -> Path:
    out = tmp_path / "shards"
    with WebDatasetWriter(out, shard_size=3, compression="zstd", fsync=False) as w:
        for i in range(7):
            w.write_sample({"spikes": rng.poisson(1, (10, 2 + i % 2)).astype(np.int32),
                            "lfp": rng.standard_normal((4, 50)).astype(np.float32), "label": "x"},
                           metadata={"trial_id": i})
    return out


def _cli(*args: str, how: str = "python -m") -> subprocess.CompletedProcess:
    if how == "script":
        assert SCRIPT, "the neurocodec console script is not installed"
        argv = [SCRIPT, *args]
    else:
        argv = [sys.executable, "-m", "neurocodec", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEUROCODEC_")}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)


def test_get_summary(dataset):
    s = ShardedDatasetInfo(dataset).get_summary()
    assert {"total_samples", "total_shards", "modalities", "shapes", "dtypes", "bytes", "compression"} <= set(s)
    assert (s["total_samples"], s["total_shards"], s["compression"]) == (7, 3, "zstd")
    assert s["modalities"] == ["label", "lfp", "spikes"]
    assert s["shapes"] == {"label": None, "lfp": [4, 50], "spikes": [10, None]}
    assert s["dtypes"] == {"label": None, "lfp": "<f4", "spikes": "<i4"}
    entries = ShardedDatasetInfo(dataset).manifest.shards
    assert s["bytes"] == sum((dataset / name).stat().st_size for e in entries for name in (e.name, e.index))
    assert s["codecs"]["spikes"] == {"id": "npy", "pack_integers": True}
    assert s["writer"]["shard_size"] == 3


def test_print_summary(dataset, capsys):
    info = ShardedDatasetInfo(dataset)
    buffer = io.StringIO()
    info.print_summary(file=buffer)
    info.print_summary()
    text = capsys.readouterr().out
    assert text == buffer.getvalue()
    lines = text.splitlines()
    assert str(dataset) in lines[0] and "format v1" in lines[0]
    assert "samples: 7" in lines[1] and "shards: 3" in lines[1] and "compression: zstd" in lines[1]
    assert lines[2] == "  files: all 3 shards and their index files present with the sizes the manifest lists"
    rows = {line.split()[0]: line for line in lines[4:]}
    assert set(rows) == {"label", "lfp", "spikes"}
    assert "(10, *)" in rows["spikes"] and "<i4" in rows["spikes"] and "codec npy (spikes 0.1.0)" in rows["spikes"]
    assert "(4, 50)" in rows["lfp"] and "text" in rows["label"]


def test_info_on_a_non_dataset(tmp_path):
    with pytest.raises(DatasetError, match=NO_MANIFEST):
        ShardedDatasetInfo(tmp_path)


@pytest.mark.parametrize("how", ["script", "python -m"])
def test_cli_info_and_verify(dataset, how):
    info = _cli("info", str(dataset), how=how)
    assert info.returncode == 0, info.stderr
    assert info.stdout == _capture_print_summary(dataset)
    verify = _cli("verify", str(dataset), how=how)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr  # no progress bar on a pipe
    assert verify.stdout.strip() == f"ok: 7 samples in 3 shards match the manifest of {dataset}"


def _capture_print_summary(path: Path) -> str:
    buffer = io.StringIO()
    ShardedDatasetInfo(path).print_summary(file=buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("how", ["script", "python -m"])
def test_cli_plugins(how):
    result = _cli("plugins", how=how)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    headers = {line.split()[0]: line for line in lines if not line.startswith(" ")}
    assert {"generic", "spikes", "lfp", "eeg", "fmri", "video", "behavior"} <= set(headers)
    assert "neurocodec 0.1.0" in headers["video"] and "neurocodec_plugins.video" in headers["video"]
    text = result.stdout
    assert "modalities: array, bytes, json, text" in text and "codecs:     bytes, json, ndarray, npy, scaled-int, text" in text
    assert "modalities: spikes" in text
    # each modality's description, from its plugin's registration
    from neurocodec.plugin.manager import load_registry

    registry = load_registry()
    for name in ("spikes", "lfp", "array"):
        assert f"      {name:<12} {registry.modality(name).description}" in lines


@pytest.mark.parametrize("command", ["info", "verify"])
@pytest.mark.parametrize("how", ["script", "python -m"])
def test_cli_on_a_non_dataset_directory(tmp_path, command, how):
    result = _cli(command, str(tmp_path), how=how)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert re.match(f"neurocodec {command}: error: {re.escape(str(tmp_path))} {NO_MANIFEST}", result.stderr)
    missing = _cli(command, str(tmp_path / "nope"), how=how)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "is not a directory" in missing.stderr


def test_cli_verify_reports_a_corrupt_shard(dataset):
    shard = dataset / "shard_000001.tar"
    with Dataset(dataset) as ds:
        offset, stored = (int(x) for x in ds.shard(1).rows[0, 1, :2])  # lfp of its sample 0
    data = bytearray(shard.read_bytes())
    data[offset + stored // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = _cli("verify", str(dataset))
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stdout.startswith("bad: shard shard_000001.tar: ") and result.stdout.count("\n") == 1
    assert result.stderr == (f"neurocodec verify: error: {dataset}: 1 of 3 shards bad (3 of 7 samples in them): "
                             "shard_000001.tar\n")
    assert _cli("info", str(dataset)).returncode == 0  # info looks at the files' sizes only


def test_cli_usage_errors_and_version():
    assert _cli().returncode == 2
    assert _cli("frobnicate").returncode == 2
    version = _cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == "neurocodec 0.1.0"
