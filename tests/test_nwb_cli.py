"""`neurocodec convert` and `neurocodec verify` run as real commands: NWB and npz inputs, the
guide's flags, the summary, one-line errors and exit codes."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nwbfiles
from neurocodec.dataset.reader import Dataset
from neurocodec.nwb.converter import NWBToWebDatasetConverter


def console_script() -> str:
    """The installed `neurocodec` command."""
    found = Path(sys.executable).parent / "neurocodec"
    return str(found) if found.exists() else (shutil.which("neurocodec") or pytest.skip("neurocodec not on PATH"))


def neurocodec(*args: str, module: bool = False) -> subprocess.CompletedProcess:
    """Run the command (or `python -m neurocodec`) and capture its output."""
    command = [sys.executable, "-m", "neurocodec"] if module else [console_script()]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, timeout=120, check=False)


def digest(directory: Path) -> dict[str, str]:
    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sessions(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("cli")
    return [nwbfiles.simple_session(root / f"rec{i}.nwb", t0=2.0 * i, seconds=5.0, seed=i) for i in range(2)]


@pytest.mark.multiprocess
def test_convert_nwb_with_the_guides_flags(tmp_path, sessions):
    out = tmp_path / "shards"
    done = neurocodec("convert", "--input", *sessions, "--output", out, "--format", "nwb", "--shard-size", 12,
                      "--workers", 2, "--compression", "zstd", "--validate", "--modalities", "spikes", "lfp")
    assert done.returncode == 0, done.stderr
    expected = 2 * ((500 - 100) // 50 + 1)
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"wrote {expected} samples in 2 shards") and "compression zstd" in lines[0]
    assert lines[1] == "modalities: lfp, spikes, spikes_observed"
    assert lines[-1] == f"validated: {expected} samples match the manifest"
    assert sorted(p.name for p in out.iterdir()) == [".neurocodec", ".shard_000000.idx", ".shard_000001.idx",
                                                     "shard_000000.tar", "shard_000001.tar"]
    assert sorted(p.name for p in (out / ".neurocodec").iterdir()) == ["conversion-report.json",
                                                                       "dataset_metadata.json"]
    # the same dataset as the Python API with the CLI's defaults (10 ms bins, 100 bins, overlap 0.5)
    api = NWBToWebDatasetConverter(tmp_path / "api", 12, ["spikes", "lfp"], 10, 100, 0.5, compression="zstd",
                                   progress=False)
    api.convert_nwb_files(sessions)
    api.finalize()
    assert digest(out) == digest(tmp_path / "api")
    verified = neurocodec("verify", out)
    assert verified.returncode == 0 and verified.stdout.startswith(f"ok: {expected} samples in 2 shards")


def test_python_m_neurocodec_convert(tmp_path, sessions):
    out = tmp_path / "m"
    done = neurocodec("convert", "--input", sessions[0], "--output", out, "--modalities", "spikes",
                      "--bin-size-ms", 20, "--sequence-length", 25, "--overlap", 0, "--no-progress", module=True)
    assert done.returncode == 0, done.stderr
    with Dataset(out) as ds:
        assert len(ds) == 10 and ds[0]["spikes"].shape == (25, 3)
        assert ds.manifest.extra["conversion"]["bin_size_s"] == 0.02


def test_convert_npz(tmp_path, rng):
    arrays = {"spikes": rng.poisson(1.0, (23, 40, 5)), "label": np.arange(23)}
    np.savez(tmp_path / "arrays.npz", **arrays)
    out = tmp_path / "npz"
    done = neurocodec("convert", "--input", tmp_path / "arrays.npz", "--output", out, "--shard-size", 10,
                      "--compression", "zstd", "--validate")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("wrote 23 samples in 3 shards")
    with Dataset(out) as ds:
        for i in range(23):
            np.testing.assert_array_equal(ds[i]["spikes"], arrays["spikes"][i])
            assert int(ds[i]["label"]) == i
    # several files: one after the other
    np.savez(tmp_path / "more.npz", spikes=arrays["spikes"][:4], label=np.arange(100, 104))
    done = neurocodec("convert", "--input", tmp_path / "arrays.npz", tmp_path / "more.npz", "--output",
                      tmp_path / "two", "--format", "npz", "--shard-size", 10)
    assert done.returncode == 0, done.stderr
    with Dataset(tmp_path / "two") as ds:
        assert [int(ds[i]["label"]) for i in range(len(ds))] == list(range(23)) + [100, 101, 102, 103]


@pytest.mark.parametrize("case", ["missing_modality", "no_such_input", "not_nwb", "not_npz", "existing_output",
                                  "bad_shard_size", "mixed_formats"])
def test_bad_input_is_a_one_line_error(tmp_path, sessions, case):
    out = tmp_path / "out"
    args = ["--input", sessions[0], "--output", out, "--modalities", "spikes"]
    expected = ""
    if case == "missing_modality":
        args = ["--input", sessions[0], "--output", out, "--modalities", "spikes", "behavior"]
        expected = f"{sessions[0]}: holds no behavior data"
    elif case == "no_such_input":
        args[1] = tmp_path / "absent.nwb"
        expected = f"--input {tmp_path / 'absent.nwb'}: no such file or directory"
    elif case == "not_nwb":
        (tmp_path / "text.nwb").write_text("not hdf5")
        args[1] = tmp_path / "text.nwb"
        expected = f"{tmp_path / 'text.nwb'}: cannot open as NWB"
    elif case == "not_npz":
        (tmp_path / "text.npz").write_text("not a zip")
        args[1] = tmp_path / "text.npz"
        expected = f"{tmp_path / 'text.npz'}: not an .npz file"
    elif case == "existing_output":
        assert neurocodec("convert", *args).returncode == 0
        expected = "already holds a dataset"
    elif case == "bad_shard_size":
        args += ["--shard-size", "0"]
        expected = "--shard-size must be a positive integer"
    else:
        np.savez(tmp_path / "x.npz", a=np.zeros(3))
        args[1:2] = [sessions[0], tmp_path / "x.npz"]
        expected = "--input names both NWB and .npz inputs"
    done = neurocodec("convert", *args)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("neurocodec convert: error: ")
    assert expected in done.stderr and "Traceback" not in done.stderr
    if case != "existing_output":
        assert not (out / ".neurocodec" / "dataset_metadata.json").exists()


def test_on_error_skip_from_the_command_line(tmp_path, sessions):
    (tmp_path / "broken.nwb").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    done = neurocodec("convert", "--input", sessions[0], tmp_path / "broken.nwb", sessions[1], "--output",
                      tmp_path / "out", "--modalities", "spikes", "lfp", "--on-error", "skip")
    assert done.returncode == 0, done.stderr
    assert f"skipped {tmp_path / 'broken.nwb'}: " in done.stdout
    with Dataset(tmp_path / "out") as ds:
        assert {ds[i]["metadata"]["source_file"] for i in range(len(ds))} == {"rec0.nwb", "rec1.nwb"}


def test_verify_finds_a_corrupted_shard(tmp_path, sessions):
    out = tmp_path / "out"
    assert neurocodec("convert", "--input", sessions[0], "--output", out, "--modalities", "spikes",
                      "--shard-size", 4).returncode == 0
    assert neurocodec("verify", out).returncode == 0
    shard = out / "shard_000001.tar"
    data = bytearray(shard.read_bytes())
    data[1024] ^= 0xFF  # inside the first member's payload
    shard.write_bytes(bytes(data))
    done = neurocodec("verify", out)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "shard_000001.tar" in done.stderr

