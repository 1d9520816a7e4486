"""NWBToWebDatasetConverter: identical datasets for any worker count and executor (a real Dask
LocalCluster included), resuming after a crash, bad files skipped or raised without damage, and
bounded memory on a file several times larger than the budget."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import nwbfiles
from neurocodec.errors import DatasetExistsError
from neurocodec.dataset.reader import Dataset
from neurocodec.nwb import NWBError
from neurocodec.nwb.converter import PART_SUMMARY, PARTS_DIR, NWBToWebDatasetConverter

MODALITIES = ["spikes", "lfp"]
TESTS = Path(__file__).parent


def converter(out, **kwargs) -> NWBToWebDatasetConverter:
    """A converter with small windows and shards (several shards per file)."""
    kwargs = {"bin_size_ms": 10, "sequence_length": 50, "overlap": 0.5, "progress": False, "fsync": False, **kwargs}
    return NWBToWebDatasetConverter(out, 7, MODALITIES, **kwargs)


def run(out, files, **kwargs) -> dict:
    """Convert `files` and finalize."""
    c = converter(out, **kwargs)
    c.convert_nwb_files(files)
    return c.finalize()


def digest(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under `directory` (relative names)."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sessions(tmp_path_factory) -> list[Path]:
    """Four small sessions with different t0, lengths and unit counts."""
    root = tmp_path_factory.mktemp("sessions")
    return [nwbfiles.simple_session(root / f"session{i}.nwb", t0=1.5 * i, seconds=4.0 + i, seed=i, units=2 + i)
            for i in range(4)]


@pytest.fixture(scope="module")
def reference(sessions, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The dataset converted in this process, one file after the other."""
    out = tmp_path_factory.mktemp("reference") / "out"
    summary = run(out, sessions)
    assert summary["samples"] == sum((int((4.0 + i) * 100) - 50) // 25 + 1 for i in range(4))
    assert summary["shards"] > 4 and not (out / PARTS_DIR).exists()
    return out, digest(out)


# -- determinism ----------------------------------------------------------------------------------
@pytest.mark.multiprocess
def test_identical_for_two_workers(tmp_path, sessions, reference):
    summary = run(tmp_path / "out", sessions, workers=2)
    assert digest(tmp_path / "out") == reference[1]
    assert summary["files"] == [str(p) for p in sessions]


@pytest.mark.multiprocess
def test_identical_for_a_process_pool_executor(tmp_path, sessions, reference):
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        run(tmp_path / "out", sessions, executor=pool)
    assert digest(tmp_path / "out") == reference[1]
    with Dataset(tmp_path / "out", verify="full") as ds:
        assert ds.verify_all() == len(ds)


@pytest.mark.multiprocess
def test_identical_on_a_dask_local_cluster(tmp_path, sessions, reference):
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, distributed.Client(cluster) as client:
        summary = run(tmp_path / "out", sessions, executor=client.get_executor())
        worker_pids = set(client.run(os.getpid).values())
    assert os.getpid() not in worker_pids and len(worker_pids) == 2
    assert digest(tmp_path / "out") == reference[1]
    assert summary["samples"] == len(Dataset(tmp_path / "out"))


def test_converting_one_file_at_a_time_is_the_same(tmp_path, sessions, reference):
    c = converter(tmp_path / "out")
    for path in sessions:
        assert c.convert_nwb_file(path)["windows"] > 0
    c.finalize()
    assert digest(tmp_path / "out") == reference[1]


# -- resume ---------------------------------------------------------------------------------------
def part_records(out: Path) -> dict[str, int]:
    """mtime_ns of every finished part's part.json, by part directory name."""
    return {p.parent.name: p.stat().st_mtime_ns for p in (out / PARTS_DIR).glob(f"*/{PART_SUMMARY}")}


CRASH = textwrap.dedent("""
    import os, signal, sys
    from neurocodec.nwb.converter import NWBToWebDatasetConverter
    c = NWBToWebDatasetConverter(sys.argv[1], 7, ["spikes", "lfp"], bin_size_ms=10, sequence_length=50,
                                 overlap=0.5, progress=False, fsync=False)
    c.convert_nwb_files(sys.argv[2:])
    os.kill(os.getpid(), signal.SIGKILL)  # crash before finalize
""")


@pytest.mark.multiprocess
def test_resume_after_a_crash_reuses_finished_parts(tmp_path, sessions, reference):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", CRASH, str(out), *map(str, sessions[:2])],
                          capture_output=True, check=False)
    assert done.returncode == -9
    assert not (out / ".neurocodec" / "dataset_metadata.json").exists()
    before = part_records(out)
    assert len(before) == 2
    c = converter(out)
    summaries = c.convert_nwb_files(sessions)
    after = part_records(out)
    assert len(after) == 4 and {k: after[k] for k in before} == before  # finished parts were not redone
    assert [s["path"] for s in summaries] == [str(p) for p in sessions]
    c.finalize()
    assert digest(out) == reference[1]


def test_a_changed_source_or_setting_is_converted_again(tmp_path, sessions):
    out = tmp_path / "out"
    converter(out).convert_nwb_files(sessions[:2])
    before = part_records(out)
    st = sessions[0].stat()
    os.utime(sessions[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        converter(out).convert_nwb_files(sessions[:2])
        after = part_records(out)
        changed = [k for k in before if after[k] != before[k]]
        assert changed == [k for k in before if k.startswith("session0-")]
    finally:
        os.utime(sessions[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    converter(out, sequence_length=40).convert_nwb_files(sessions[:1])  # other settings: another part
    assert len(part_records(out)) == 3


# -- bad files ------------------------------------------------------------------------------------
@pytest.fixture
def bad_file(tmp_path) -> Path:
    nwb = nwbfiles.new_file(identifier="bad")
    nwbfiles.add_units(nwb, [np.linspace(0, 5, 100)])  # spikes but no LFP
    return nwbfiles.write(nwb, tmp_path / "no_lfp.nwb")


@pytest.mark.parametrize("workers", [1, 2])
def test_on_error_skip_warns_counts_and_converts_the_rest(tmp_path, sessions, reference, bad_file, workers):
    files = [sessions[0], bad_file, sessions[1], sessions[2], sessions[3]]
    c = converter(tmp_path / "out", on_error="skip", workers=workers)
    with pytest.warns(UserWarning, match=r"skipping .*no_lfp\.nwb: .*holds no lfp data"):
        results = c.convert_nwb_files(files)
    assert results[1] is None and all(r is not None for i, r in enumerate(results) if i != 1)
    summary = c.finalize()
    assert [s["file"] for s in summary["skipped_files"]] == [str(bad_file)]
    assert "no_lfp.nwb" in summary["skipped_files"][0]["error"]
    assert summary["files"] == [str(p) for p in sessions]
    ours, theirs = digest(tmp_path / "out"), reference[1]
    assert {k: v for k, v in ours.items() if k.endswith((".tar", ".idx"))} == \
        {k: v for k, v in theirs.items() if k.endswith((".tar", ".idx"))}
    manifest = json.loads((tmp_path / "out" / ".neurocodec" / "dataset_metadata.json").read_text())
    assert manifest["extra"]["skipped_files"] == summary["skipped_files"]
    # and in the report next to the shards: every skipped file with its reason, every converted one
    assert summary["report"] == str(tmp_path / "out" / ".neurocodec" / "conversion-report.json")
    report = json.loads(Path(summary["report"]).read_text())
    assert report["skipped_files"] == summary["skipped_files"]
    assert [f["file"] for f in report["files"]] == summary["files"]
    assert all(f["windows"] > 0 and f["series"] == {"spikes": "/units", "lfp": "/processing/ecephys/LFP/lfp"}
               for f in report["files"])


def test_missing_input_file_is_skipped_or_raised(tmp_path, sessions):
    absent = tmp_path / "absent.nwb"
    with pytest.raises(NWBError, match="absent.nwb"):
        converter(tmp_path / "raise").convert_nwb_files([absent])
    c = converter(tmp_path / "skip", on_error="skip")
    with pytest.warns(UserWarning, match="absent.nwb"):
        c.convert_nwb_files([sessions[0], absent])
    assert c.finalize()["skipped_files"][0]["file"] == str(absent)


def test_a_bad_file_damages_nothing(tmp_path, sessions, reference, bad_file):
    good_elsewhere = tmp_path / "elsewhere"
    run(good_elsewhere, sessions[:2])
    elsewhere_before = digest(good_elsewhere)
    out = tmp_path / "out"
    run(out, sessions[2:])  # a dataset already in the output directory, replaced only by finalize()
    out_before = digest(out)
    c = converter(out, overwrite=True)
    with pytest.raises(NWBError, match=r"no_lfp\.nwb: holds no lfp data"):
        c.convert_nwb_files([sessions[0], sessions[1], bad_file, sessions[3]])
    for directory, before in ((good_elsewhere, elsewhere_before), (out, out_before)):
        assert {k: v for k, v in digest(directory).items() if not k.startswith(PARTS_DIR)} == before
        with Dataset(directory, verify="full") as ds:
            assert ds.verify_all() == len(ds)
    finished = part_records(out)
    assert sorted(k.split("-")[0] for k in finished) == ["session0", "session1"]
    # re-run with the bad file left out: the earlier files' parts are reused, the result is right
    c = converter(out, overwrite=True)
    c.convert_nwb_files(sessions)
    assert {k: v for k, v in part_records(out).items() if k in finished} == finished
    c.finalize()
    assert digest(out) == reference[1]
    with pytest.raises(DatasetExistsError):
        converter(out)


# -- bounded memory -------------------------------------------------------------------------------
MEASURE = textwrap.dedent("""
    import json, sys, warnings
    warnings.simplefilter("ignore")

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

    import h5py, numpy, pynwb
    from neurocodec.nwb.converter import NWBToWebDatasetConverter
    from neurocodec.plugin.manager import default_registry
    default_registry()
    baseline = status("VmRSS:")
    c = NWBToWebDatasetConverter(sys.argv[2], 100, ["spikes", "lfp"], bin_size_ms=10, sequence_length=100,
                                 overlap=0.0, progress=False, fsync=False)
    c.convert_nwb_files([sys.argv[1]])
    converted = status("VmHWM:")
    summary = c.finalize()
    print(json.dumps({"baseline": baseline, "converted": converted, "peak": status("VmHWM:"),
                      "samples": summary["samples"], "bytes": summary["bytes"]}))
""")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read peak RSS")
def test_converting_a_large_file_keeps_memory_bounded(tmp_path):
    megabytes = 320
    source = nwbfiles.big_lfp_session(tmp_path / "big.nwb", megabytes)
    try:
        size = source.stat().st_size
        assert size > megabytes * 2**20
        done = subprocess.run([sys.executable, "-c", MEASURE, str(source), str(tmp_path / "out")],
                              capture_output=True, text=True, timeout=240, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["samples"] == (megabytes * 2**20 // 256) // 1000
        assert result["bytes"] > size * 0.95  # the whole signal was written
        growth = result["peak"] - result["baseline"]
        assert growth < size / 3, (growth / 2**20, result)
        with Dataset(tmp_path / "out") as ds:
            last = ds[len(ds) - 1]["lfp"]
            row = (len(ds) - 1) * 1000 + np.arange(1000)
            np.testing.assert_array_equal(last[:, 0], (row % 65536).astype(np.float32))
    finally:
        source.unlink(missing_ok=True)
