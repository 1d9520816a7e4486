"""NWB-Zarr input: folders written by hdmf-zarr convert to exactly the bytes the same content in
HDF5 converts to; detected by their Zarr metadata; reused by their files' sizes and mtimes."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("hdmf_zarr")
import zarr  # noqa: E402

import nwbfiles  # noqa: E402
from neurocodec.nwb.converter import NWBToWebDatasetConverter  # noqa: E402
from neurocodec.nwb.extract import NWBError  # noqa: E402
from nwb_sources import array_payloads, manifest_sessions, window_metadata, zarr_copy  # noqa: E402

SETTINGS = dict(modalities=["spikes", "lfp", "behavior"], bin_size_ms=10.0, sequence_length=100, overlap=0.5,
                compression="zstd", progress=False)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """The same session (units, LFP, Position, trials) in HDF5 and, exported by hdmf-zarr, in Zarr."""
    root = tmp_path_factory.mktemp("zarr")
    h5 = nwbfiles.multirate_session(root / "multirate.nwb")
    return h5, zarr_copy(h5, root / "multirate.nwb.zarr")


def convert(inputs, out, **kw):
    with NWBToWebDatasetConverter(out, **{**SETTINGS, **kw}) as converter:
        converter.convert_nwb_files(inputs)
        return converter.finalize()


def test_zarr_folder_converts_to_the_bytes_of_the_hdf5_file(session, tmp_path):
    h5, folder = session
    assert (folder / ".zgroup").is_file() and not (folder / "processing" / "ecephys" / "LFP" / "lfp").is_file()
    from_h5, from_zarr = convert([h5], tmp_path / "h5"), convert([folder], tmp_path / "zarr")
    assert from_zarr["samples"] == from_h5["samples"] > 5
    want, got = array_payloads(tmp_path / "h5"), array_payloads(tmp_path / "zarr")
    assert {"spikes", "lfp", "behavior"} <= set(got[0])
    assert got == want
    # values checked against the Zarr arrays themselves: window 0 starts at the LFP's first sample
    lfp = zarr.open(str(folder), mode="r")["processing/ecephys/LFP/lfp/data"]
    from neurocodec.dataset.reader import Dataset

    with Dataset(tmp_path / "zarr") as ds:
        first = ds[0]
        np.testing.assert_array_equal(first["lfp"], lfp[0:1000])
        assert first["metadata"]["start_time"] == pytest.approx(3.25)


def test_zarr_windows_and_session_record_their_source(session, tmp_path):
    h5, folder = session
    convert([folder], tmp_path / "out")
    files = [p for p in folder.rglob("*") if p.is_file()]
    want = {"path": str(folder.resolve()), "format": "zarr", "files": len(files),
            "size": sum(p.stat().st_size for p in files), "mtime_ns": max(p.stat().st_mtime_ns for p in files)}
    (record,) = manifest_sessions(tmp_path / "out").values()
    assert record["source"] == want
    assert record["file"] == "multirate.nwb.zarr"
    assert all(m["source"] == want for m in window_metadata(tmp_path / "out"))


def test_zarr_is_told_by_its_metadata_not_its_name(session, tmp_path):
    _, folder = session
    renamed = shutil.copytree(folder, tmp_path / "recording")
    convert([renamed], tmp_path / "out")
    assert array_payloads(tmp_path / "out") == array_payloads(_converted(folder, tmp_path / "ref"))
    plain = tmp_path / "plain_folder"
    plain.mkdir()
    (plain / "x.nwb").write_bytes(b"")
    with pytest.raises(NWBError, match=r"plain_folder: is a directory, neither an NWB file nor an NWB-Zarr folder"):
        convert([plain], tmp_path / "bad")


def _converted(folder, out):
    convert([folder], out)
    return out


def test_zarr_part_is_reused_until_a_file_in_the_folder_changes(session, tmp_path, caplog):
    _, original = session
    folder = shutil.copytree(original, tmp_path / "s.nwb.zarr")
    out, parts = tmp_path / "out", tmp_path / "parts"
    convert([folder], out, parts_dir=parts, keep_parts=True)
    with caplog.at_level(logging.INFO, logger="neurocodec.nwb"):
        convert([folder], out, parts_dir=parts, keep_parts=True, overwrite=True)
    assert "reusing finished part" in caplog.text
    caplog.clear()
    chunk = next(p for p in (folder / "units").rglob("*") if p.is_file() and not p.name.startswith("."))
    st = chunk.stat()
    os.utime(chunk, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same bytes, newer mtime
    with caplog.at_level(logging.INFO, logger="neurocodec.nwb"):
        convert([folder], out, parts_dir=parts, keep_parts=True, overwrite=True)
    assert "reusing finished part" not in caplog.text
    assert array_payloads(out) == array_payloads(_converted(original, tmp_path / "ref"))


def test_zarr_without_hdmf_zarr_says_what_to_install(session, tmp_path):
    """A real interpreter in which hdmf_zarr cannot be imported (blocked before anything loads)."""
    _, folder = session
    code = ("import sys; sys.modules['hdmf_zarr'] = None\n"
            "from neurocodec.cli import main\n"
            f"sys.exit(main(['convert', '--input', {str(folder)!r}, '--output', {str(tmp_path / 'out')!r}, "
            "'--format', 'nwb', '--no-progress']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "is an NWB-Zarr folder, and reading one needs hdmf-zarr: pip install 'neurocodec[zarr]'" in done.stderr
    assert str(folder) in done.stderr
    assert not (tmp_path / "out" / ".neurocodec" / "dataset_metadata.json").exists()


def test_zarr_from_the_command_line(session, tmp_path):
    h5, folder = session
    done = subprocess.run([sys.executable, "-m", "neurocodec", "convert", "--input", str(folder), "--output",
                           str(tmp_path / "out"), "--format", "nwb", "--compression", "zstd", "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert array_payloads(tmp_path / "out") == array_payloads(_converted(h5, tmp_path / "ref"))


class _RunsCode:
    """Unpickling this calls os.system: what a hostile object array would hold."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_zarr_object_array_naming_other_code_is_refused_and_never_run(session, tmp_path):
    """hdmf-zarr pickles its references; an object array whose pickle names any other global (here
    os.system) is an error naming the folder, and the code does not run."""
    import pickle

    import numcodecs

    _, original = session
    folder = shutil.copytree(original, tmp_path / "hostile.nwb.zarr")
    marker = tmp_path / "ran"
    chunk = folder / "general" / "extracellular_ephys" / "electrodes" / "group" / "0"
    hostile = np.empty(2, dtype=object)
    hostile[:] = [_RunsCode(f"touch {marker}"), _RunsCode(f"touch {marker}")]
    chunk.write_bytes(numcodecs.Blosc(cname="lz4", clevel=5, shuffle=1).encode(pickle.dumps(hostile, protocol=5)))
    with pytest.raises(NWBError, match=r"hostile\.nwb\.zarr.*names (posix|os)\.system, which neurocodec does not "
                                       r"unpickle"):
        convert([folder], tmp_path / "out", modalities=["lfp"])
    assert not marker.exists()
    assert not (tmp_path / "out" / ".neurocodec" / "dataset_metadata.json").exists()
