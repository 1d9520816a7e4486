"""NWB files at URLs (https:// from a range-serving HTTP server, s3:// from moto, both on loopback)
are read in place: only the byte ranges read are transferred, a connection cut mid-file is
retried, a failure that persists is an error naming the URL with nothing half-written, and the
result is the bytes a local conversion of the same file gives."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest

import nwbfiles
from neurocodec.format import layout
from neurocodec.nwb.converter import NWBToWebDatasetConverter
from neurocodec.nwb.extract import NWBError
from neurocodec.nwb.source import NWBSource
from nwb_sources import array_payloads, manifest_sessions, window_metadata
from storage_servers import BUCKET, FaultProxy, RangeFileServer, moto_server, no_sdk_retries, static_http_server

LFP_MB = 12
SPIKES = dict(modalities=["spikes"], bin_size_ms=20.0, sequence_length=50, overlap=0.0, progress=False)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setenv("NEUROCODEC_RETRY_ATTEMPTS", "5")
    monkeypatch.setenv("NEUROCODEC_RETRY_BASE_DELAY", "0.001")
    monkeypatch.setenv("NEUROCODEC_RETRY_MAX_DELAY", "0.01")


@pytest.fixture(scope="module")
def www(tmp_path_factory) -> Path:
    """A directory served over HTTP: big.nwb (units and a 12 MB LFP written after them), small.nwb."""
    root = tmp_path_factory.mktemp("www")
    nwbfiles.big_lfp_session(root / "big.nwb", LFP_MB, channels=16)
    nwbfiles.simple_session(root / "small.nwb", seconds=6.0, seed=3)
    return root


@pytest.fixture(scope="module")
def local_big(www, tmp_path_factory) -> Path:
    """big.nwb converted from local disk: what every remote conversion must equal."""
    return convert([www / "big.nwb"], tmp_path_factory.mktemp("ref") / "ds")


@pytest.fixture(scope="module")
def endpoint():
    with moto_server() as ep:
        yield ep


def convert(inputs, out, **kw) -> Path:
    with NWBToWebDatasetConverter(out, **{**SPIKES, **kw}) as converter:
        converter.convert_nwb_files(inputs)
        converter.finalize()
    return Path(out)


def assert_nothing_written(out: Path, parts: Path) -> None:
    assert not (out / layout.MANIFEST_PATH).exists()
    assert not list(parts.rglob(layout.MANIFEST)) if parts.exists() else True


def test_https_reads_only_the_ranges_it_needs(www, local_big, tmp_path):
    size = (www / "big.nwb").stat().st_size
    with RangeFileServer(str(www)) as server:
        url = f"{server.url}/big.nwb"
        out = convert([url], tmp_path / "out")
        sent = server.total_sent()
    assert size > LFP_MB * 2**20
    assert 0 < sent < size / 4, f"{sent} bytes sent of a {size}-byte file for its spikes"
    assert all(rng is not None for _, _, rng, _ in server.log)  # range requests only, never the whole file
    assert array_payloads(out) == array_payloads(local_big)
    etag = f'"{size:x}-{(www / "big.nwb").stat().st_mtime_ns:x}"'
    source = {"url": url, "size": size, "etag": etag}
    (session,) = manifest_sessions(out).values()
    assert session["source"] == source and session["file"] == "big.nwb"
    assert session["key"].startswith("big-") and session["key"] != manifest_sessions(local_big).popitem()[0]
    assert all(m["source"] == source and m["source_file"] == "big.nwb" for m in window_metadata(out))
    assert window_metadata(local_big)[0]["source"] == {
        "path": str((www / "big.nwb").resolve()), "size": size, "mtime_ns": (www / "big.nwb").stat().st_mtime_ns}


def test_https_connection_cut_mid_file_is_retried(www, local_big, tmp_path):
    with RangeFileServer(str(www), plan=lambda n, path: "cut" if n == 1 else "pass") as server:
        out = convert([f"{server.url}/big.nwb"], tmp_path / "out")
    cut = [entry for entry in server.log if entry[3] == "cut"]
    assert len(cut) == 1 and [e[2] for e in server.log].count(cut[0][2]) == 2  # the same range again
    assert array_payloads(out) == array_payloads(local_big)


@pytest.mark.parametrize("failure", ["cut", "503"])
def test_https_failure_that_persists_names_the_file_and_writes_nothing(www, tmp_path, failure):
    out, parts = tmp_path / "out", tmp_path / "parts"
    with RangeFileServer(str(www), plan=lambda n, path: failure if n >= 1 else "pass") as server:
        url = f"{server.url}/big.nwb"
        with pytest.raises(NWBError, match=rf"^{url}: reading bytes \d+-\d+: failed 5 times"):
            convert([url], out, parts_dir=parts)
    assert len(server.log) == 6  # the first range, then five tries of the next
    assert_nothing_written(out, parts)


def test_https_skipped_file_is_reported_and_the_others_converted(www, tmp_path):
    out = tmp_path / "out"
    with RangeFileServer(str(www), plan=lambda n, path: "404" if path == "/big.nwb" and n >= 1 else "pass") \
            as server:
        urls = [f"{server.url}/big.nwb", f"{server.url}/small.nwb", f"{server.url}/gone.nwb"]
        with pytest.warns(UserWarning, match="skipping"):
            with NWBToWebDatasetConverter(out, **SPIKES, on_error="skip") as converter:
                results = converter.convert_nwb_files(urls)
                summary = converter.finalize()
    assert results[0] is None and results[1]["windows"] > 0 and results[2] is None
    skipped = {s["file"]: s["error"] for s in summary["skipped_files"]}
    assert set(skipped) == {urls[0], urls[2]}
    assert skipped[urls[0]].startswith(f"{urls[0]}: reading failed for good (ClientResponseError: 404")
    assert skipped[urls[2]] == f"{urls[2]}: no such file"
    assert summary["files"] == [urls[1]]


def test_https_part_is_reused_until_the_etag_changes(www, tmp_path, caplog):
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(www / "small.nwb", served / "s.nwb")
    out, parts = tmp_path / "out", tmp_path / "parts"
    with RangeFileServer(str(served)) as server:
        url = f"{server.url}/s.nwb"
        convert([url], out, parts_dir=parts, keep_parts=True)
        with caplog.at_level(logging.INFO, logger="neurocodec.nwb"):
            convert([url], out, parts_dir=parts, keep_parts=True, overwrite=True)
        assert f"reusing finished part for {url}" in caplog.text
        caplog.clear()
        st = (served / "s.nwb").stat()
        os.utime(served / "s.nwb", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new ETag, same size
        with caplog.at_level(logging.INFO, logger="neurocodec.nwb"):
            convert([url], out, parts_dir=parts, keep_parts=True, overwrite=True)
        assert "reusing finished part" not in caplog.text


def test_a_stalled_https_read_times_out_and_is_retried(www, tmp_path, monkeypatch, caplog):
    """A server that stops sending in the middle of a body: the read fails after the silence
    limit (1 s here, 60 s by default) and is retried; the conversion equals a local one."""
    from neurocodec.storage import http_timeouts

    monkeypatch.setattr(http_timeouts, "SILENCE_TIMEOUT_S", 1.0)
    gets = []

    def stall_first_range(n, method, path):
        gets.extend([n] if method == "GET" else [])
        return "stall" if gets == [n] else "pass"

    with RangeFileServer(str(www)) as server, FaultProxy(server.url, stall_first_range) as proxy:
        try:
            with caplog.at_level(logging.WARNING, logger="neurocodec.storage"):
                convert([f"{proxy.endpoint}/small.nwb"], tmp_path / "remote")
        finally:
            proxy.release()
        # the stall ended by the silence limit (the proxy would hold it for 60 s)
        assert "TimeoutError" in caplog.text, caplog.text
        assert proxy.stalled.is_set() and len(proxy.requests("GET")) >= 2, proxy.log
    local = convert([www / "small.nwb"], tmp_path / "local")
    assert array_payloads(tmp_path / "remote") == array_payloads(local)


def test_url_without_etag_or_date_is_never_reused():
    from neurocodec.nwb.source import identifies_version

    assert not identifies_version({"url": "https://x/y.nwb", "size": 5, "etag": None, "last_modified": None})
    assert identifies_version({"url": "https://x/y.nwb", "size": 5, "etag": '"abc"'})
    assert identifies_version({"path": "/x/y.nwb", "size": 5, "mtime_ns": 1})


# -- S3 (moto on loopback, through the fault-injecting proxy) ------------------------------------

@pytest.fixture(scope="module")
def s3_big(endpoint, www) -> str:
    fs = fsspec.filesystem("s3", **no_sdk_retries(endpoint))
    fs.put(str(www / "big.nwb"), f"{BUCKET}/sub-x/ses-y.nwb")
    fs.put(str(www / "small.nwb"), f"{BUCKET}/sub-z/ses-w.nwb")
    return f"s3://{BUCKET}/sub-x/ses-y.nwb"


def s3_input(endpoint: str) -> dict:
    return no_sdk_retries(endpoint)


@pytest.fixture
def one_s3fs_try(monkeypatch):
    """s3fs's own retry loop (5 tries, sleeping up to seconds) off: neurocodec's is under test."""
    import s3fs

    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)


def test_s3_connection_cut_mid_file_is_retried(one_s3fs_try, endpoint, s3_big, www, local_big, tmp_path):
    gets = []

    def cut_second_read(n, method, path):
        if method == "GET" and path.split("?")[0].endswith("ses-y.nwb"):
            gets.append(n)
            return "cut" if len(gets) == 2 else "pass"
        return "pass"

    with FaultProxy(endpoint.removeprefix("http://"), cut_second_read) as proxy:
        out = convert([s3_big], tmp_path / "out", input_storage_options=s3_input(proxy.endpoint))
    assert len(proxy.requests("GET", "ses-y.nwb", "cut")) == 1 and len(gets) >= 3
    assert array_payloads(out) == array_payloads(local_big)
    (session,) = manifest_sessions(out).values()
    assert session["source"]["url"] == s3_big and session["source"]["etag"]
    assert session["source"]["size"] == (www / "big.nwb").stat().st_size


def test_s3_failure_that_persists_names_the_file_and_writes_nothing(one_s3fs_try, endpoint, s3_big, tmp_path):
    out, parts = tmp_path / "out", tmp_path / "parts"
    gets = []

    def cut_after_first(n, method, path):
        if method == "GET":
            gets.append(n)
            return "cut" if len(gets) >= 2 else "pass"
        return "pass"

    with FaultProxy(endpoint.removeprefix("http://"), cut_after_first) as proxy:
        with pytest.raises(NWBError, match=rf"^{s3_big}: reading bytes \d+-\d+: failed 5 times"):
            convert([s3_big], out, parts_dir=parts, input_storage_options=s3_input(proxy.endpoint))
    assert_nothing_written(out, parts)


def test_s3_source_pickles_as_url_and_options():
    import pickle

    source = NWBSource.of("s3://bucket/sub-x/ses-y.nwb", {"anon": True})
    again = pickle.loads(pickle.dumps(source))
    assert again == source and again.storage_options == {"anon": True} and str(again.path) == source.location


@pytest.mark.slow
@pytest.mark.multiprocess
def test_s3_workers_open_the_files_themselves(endpoint, s3_big, www, tmp_path):
    urls = [s3_big, f"s3://{BUCKET}/sub-z/ses-w.nwb"]
    options = s3_input(endpoint)
    one = convert(urls, tmp_path / "one", input_storage_options=options)
    two = convert(urls, tmp_path / "two", input_storage_options=options, workers=2)
    assert array_payloads(two) == array_payloads(one)
    assert [m["source"]["url"] for m in window_metadata(two)] == [m["source"]["url"] for m in window_metadata(one)]


def test_s3_from_the_command_line(endpoint, s3_big, local_big, tmp_path):
    flags = ["--storage-option", "key=testing", "--storage-option", "secret=testing",
             "--storage-option", f"endpoint_url={endpoint}",
             "--storage-option", 'client_kwargs={"region_name": "us-east-1"}']
    cmd = [sys.executable, "-m", "neurocodec", "convert", "--modalities", "spikes", "--bin-size-ms", "20",
           "--sequence-length", "50", "--overlap", "0", "--no-progress", *flags]
    done = subprocess.run([*cmd, "--input", s3_big, "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert array_payloads(tmp_path / "out") == array_payloads(local_big)
    missing = f"s3://{BUCKET}/sub-x/missing.nwb"
    done = subprocess.run([*cmd, "--input", missing, "--output", str(tmp_path / "bad")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip() == f"neurocodec convert: error: {missing}: no such file"
    assert not (tmp_path / "bad" / layout.MANIFEST_PATH).exists()
    # credentials for the input alone: the local output takes no storage options
    inputs = [flag.replace("--storage-option", "--input-storage-option") for flag in flags]
    done = subprocess.run([*cmd[:-len(flags)], *inputs, "--input", s3_big, "--output", str(tmp_path / "own")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert array_payloads(tmp_path / "own") == array_payloads(local_big)
    done = subprocess.run([*cmd[:-len(flags)], "--input-storage-option", "nokey", "--input", s3_big,
                           "--output", str(tmp_path / "bad2")], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "--input-storage-option takes KEY=VALUE, got 'nokey'" in done.stderr and "Traceback" not in done.stderr


def test_https_file_changed_during_conversion_is_not_recorded_as_finished(www, tmp_path):
    """The server's file gets a new version (ETag) while its ranges are being read: the part is not
    marked finished, and the error says to convert again."""
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(www / "big.nwb", served / "b.nwb")

    def touch_on_second_read(n, path):
        if n == 1:
            st = (served / "b.nwb").stat()
            os.utime(served / "b.nwb", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        return "pass"

    out, parts = tmp_path / "out", tmp_path / "parts"
    with RangeFileServer(str(served), plan=touch_on_second_read) as server:
        url = f"{server.url}/b.nwb"
        with pytest.raises(NWBError, match=rf"^{url}: changed while it was being converted; convert it again"):
            convert([url], out, parts_dir=parts)
    assert not list(parts.rglob("part.json")) and not (out / layout.MANIFEST_PATH).exists()


def test_https_not_hdf5_or_no_range_support_is_an_error_naming_the_file(www, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "notes.nwb").write_text("not an HDF5 file\n" * 100)
    shutil.copy(www / "big.nwb", served / "big.nwb")
    with RangeFileServer(str(served)) as server:
        url = f"{server.url}/notes.nwb"
        with pytest.raises(NWBError, match=rf"^{url}: cannot open as NWB \(OSError: .*file signature not found"):
            convert([url], tmp_path / "a")
    # http.server answers every GET with the whole file: past the first block that is refused,
    # not read whole
    with static_http_server(str(served)) as base:
        url = f"{base}/big.nwb"
        with pytest.raises(NWBError, match=rf"^{url}: reading failed for good \(ValueError: The HTTP server "
                                           r"doesn't appear to support range requests"):
            convert([url], tmp_path / "b")
    assert not (tmp_path / "b" / layout.MANIFEST_PATH).exists()


@pytest.mark.slow
def test_a_url_that_fails_to_open_leaves_a_process_that_exits_cleanly():
    """h5py keeps the Python file object of a URL referenced from an HDF5 property list held by
    the failed open's frames; freed only at interpreter shutdown, HDF5 called into a finalized
    Python and pytest died of a segmentation fault after every test had passed. Run the tests
    that fail to open and to read a URL in a pytest process of their own: it must exit 0."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)),
         "-k", "not_hdf5_or_no_range_support or skipped_file_is_reported"],
        capture_output=True, text=True, timeout=300, check=False, cwd=Path(__file__).parent)
    assert done.returncode == 0, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    assert "2 passed" in done.stdout


def test_external_frames_of_a_url_are_refused_in_words(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    nwb = nwbfiles.new_file(identifier="external")
    nwb.add_acquisition(nwbfiles.external_video("camera", ["camera.mp4"], rate=30.0, frames=90))
    nwbfiles.write(nwb, served / "external.nwb")
    with RangeFileServer(str(served)) as server:
        url = f"{server.url}/external.nwb"
        with pytest.raises(NWBError, match=rf"^{url}: /acquisition/camera keeps its frames in external files "
                                           r"\(camera.mp4\), which are not read for an NWB file at a URL"):
            convert([url], tmp_path / "out", modalities=["video"])
