"""The writer: manifest contents, the per-shard index, naming, the summary, and every error path."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from neurocodec import (
    Dataset, DatasetError, DatasetExistsError, SampleError, ShardError, WebDatasetWriter, create_shards_from_arrays,
)
from neurocodec.errors import WriterClosedError
from neurocodec.format.compression import COMPRESSIONS, SUFFIX

VERSION = importlib.metadata.version("neurocodec")


def _samples(rng: np.random.Generator, n: int) -> list[dict]:
    return [{
        "spikes": rng.poisson(2, (10, 4)), "lfp": rng.standard_normal((3, 20)).astype(np.float32),
        "label": f"trial {i}", "extra": rng.standard_normal((2, 1 + i % 3)),
    } for i in range(n)]


def _write(out: Path, samples, *, shard_size=3, compression="none", metadata=True, **options) -> dict:
    with WebDatasetWriter(out, shard_size=shard_size, compression=compression, fsync=False, **options) as w:
        for i, s in enumerate(samples):
            key = w.write_sample(s, metadata={"trial_id": i} if metadata else None)
            assert key == f"sample_{i + 1:09d}"
    return w.finalize()


def _manifest(out: Path) -> dict:
    return json.loads((out / ".neurocodec" / "dataset_metadata.json").read_text())


def _files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


# -- manifest ------------------------------------------------------------------------------------

@pytest.mark.parametrize("compression", ["none", "xz"])
def test_manifest_contents(tmp_path, rng, compression):
    out = tmp_path / "ds"
    _write(out, _samples(rng, 7), compression=compression, compression_level=None,
           modality_options={"lfp": {"dtype": "float16"}}, dataset_metadata={"lab": "x", "session": 3})
    m = _manifest(out)
    assert m["format"] == "neurocodec-shards" and m["format_version"] == 1
    assert m["created_with"] == {"neurocodec": VERSION}
    assert (m["compression"], m["total_samples"], m["total_shards"]) == (compression, 7, 3)
    assert m["writer"] == {"shard_size": 3, "compression": compression, "compression_level": None,
                           "modality_options": {"lfp": {"dtype": "float16"}}}
    assert m["extra"] == {"lab": "x", "session": 3}
    fields = {f["name"]: f for f in m["fields"]}
    assert [f["name"] for f in m["fields"]] == ["extra", "label", "lfp", "spikes", "metadata"]
    want = {
        "spikes": ("spikes", "array", {"id": "npy", "pack_integers": True}, "npy", "spikes", "<i8", [10, 4]),
        "lfp": ("lfp", "array", {"id": "npy", "pack_integers": False}, "npy", "lfp", "<f2", [3, 20]),
        "extra": ("array", "array", {"id": "npy", "pack_integers": False}, "npy", "generic", "<f8", [2, None]),
        "label": ("text", "text", {"id": "text"}, "txt", "generic", None, None),
        "metadata": ("json", "json", {"id": "json"}, "json", "generic", None, None),
    }
    for name, (modality, kind, codec, ext, plugin, dtype, shape) in want.items():
        f = fields[name]
        assert (f["modality"], f["kind"], f["codec"], f["extension"]) == (modality, kind, codec, ext), name
        assert (f["plugin"], f["plugin_version"], f["distribution"]) == (plugin, VERSION, "neurocodec"), name
        assert (f["dtype"], f["shape"]) == (dtype, shape), name
        assert 0 < f["max_raw_bytes"] and 0 < f["max_stored_bytes"]
    first = 0
    for n, shard in enumerate(m["shards"]):
        tar_path, idx_path = out / f"shard_{n:06d}.tar", out / f".shard_{n:06d}.idx"
        assert (shard["name"], shard["index"]) == (tar_path.name, idx_path.name)
        assert shard["samples"] == (3 if n < 2 else 1) and shard["first_sample"] == first
        first += shard["samples"]
        assert shard["bytes"] == tar_path.stat().st_size
        assert shard["sha256"] == hashlib.sha256(tar_path.read_bytes()).hexdigest()
        assert shard["index_bytes"] == idx_path.stat().st_size
        assert shard["index_sha256"] == hashlib.sha256(idx_path.read_bytes()).hexdigest()
    assert _files(out) == sorted([".neurocodec"] + [name for n in range(3)
                                                    for name in (f".shard_{n:06d}.idx", f"shard_{n:06d}.tar")])
    assert _files(out / ".neurocodec") == ["dataset_metadata.json"]


def test_summary_returned_by_finalize(tmp_path, rng):
    out = tmp_path / "ds"
    w = WebDatasetWriter(out, shard_size=4, compression="zstd", fsync=False)
    for s in _samples(rng, 9):
        w.write_sample(s)
    assert w.samples_written == 9
    summary = w.finalize()
    on_disk = sum(p.stat().st_size for p in out.glob("*shard_*"))  # shards and their hidden indexes
    assert summary == {"samples": 9, "shards": 3, "bytes": on_disk, "modalities": ["extra", "label", "lfp", "spikes"],
                       "compression": "zstd", "output_dir": str(out)}
    assert w.finalize() == summary  # idempotent


# -- the per-shard index -------------------------------------------------------------------------

@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_index_offsets_match_tar_members(tmp_path, rng, compression):
    out = tmp_path / "ds"
    _write(out, _samples(rng, 5), shard_size=3, compression=compression)
    field_names = [f["name"] for f in _manifest(out)["fields"]]
    ds = Dataset(out)
    for n in range(2):
        rows = np.load(out / f".shard_{n:06d}.idx", allow_pickle=False)
        samples = 3 if n == 0 else 2
        assert rows.dtype == np.uint64 and rows.shape == (samples, len(field_names), 4)
        data = (out / f"shard_{n:06d}.tar").read_bytes()
        # Python's tarfile is fine here: these are our own, trusted shards.
        with tarfile.open(out / f"shard_{n:06d}.tar") as tf:
            members = tf.getmembers()
        assert len(members) == samples * len(field_names)
        for j, member in enumerate(members):
            s, c = divmod(j, len(field_names))
            ext = {"metadata": "json", "label": "txt"}.get(field_names[c], "npy") + SUFFIX[compression]
            assert member.name == f"sample_{3 * n + s + 1:09d}.{field_names[c]}.{ext}"
            assert member.isreg() and member.mode == 0o644 and member.mtime == 0
            offset, stored, raw, crc = (int(x) for x in rows[s, c])
            assert (member.offset_data, member.size) == (offset, stored)
            assert zlib.crc32(data[offset:offset + stored]) == crc
            assert len(ds.shard(n).read_payload(s, c)) == raw
            if compression == "none":
                assert raw == stored


def test_reading_sample_k_touches_no_other_sample(tmp_path, rng):
    out = tmp_path / "ds"
    samples = _samples(rng, 6)
    _write(out, samples, shard_size=6)
    rows = np.load(out / ".shard_000000.idx")
    shard = out / "shard_000000.tar"
    data = bytearray(shard.read_bytes())
    keep = 3
    for s in range(6):
        if s != keep:  # overwrite every payload byte of every other sample (headers stay intact)
            for offset, stored, _, _ in rows[s]:
                data[int(offset):int(offset + stored)] = b"\xaa" * int(stored)
    shard.write_bytes(bytes(data))
    with Dataset(out) as ds:
        got = ds[keep]
        assert got["__key__"] == "sample_000000004" and got["metadata"] == {"trial_id": keep}
        np.testing.assert_array_equal(got["spikes"], samples[keep]["spikes"])
        assert got["label"] == samples[keep]["label"]
        for s in (0, 2, 5):
            with pytest.raises(ShardError, match=rf"shard_000000.tar.*sample_{s + 1:09d}\.extra\.npy"):
                ds[s]


# -- naming ---------------------------------------------------------------------------------------

def test_shard_names_and_keys_numbered_from_one_across_shards(tmp_path, rng):
    out = tmp_path / "ds"
    _write(out, _samples(rng, 7), shard_size=2, metadata=False)
    assert sorted(p.name for p in out.glob("*.tar")) == [f"shard_{n:06d}.tar" for n in range(4)]
    with tarfile.open(out / "shard_000002.tar") as tf:
        assert tf.getnames() == [f"sample_{k:09d}.{f}" for k in (5, 6) for f in
                                 ("extra.npy", "label.txt", "lfp.npy", "spikes.npy", "metadata.json")]
    with Dataset(out) as ds:
        assert [s["__key__"] for s in ds] == [f"sample_{k:09d}" for k in range(1, 8)]
        assert [s["metadata"] for s in ds] == [{}] * 7


# -- error paths ---------------------------------------------------------------------------------

@pytest.fixture
def writer(tmp_path):
    w = WebDatasetWriter(tmp_path / "ds", shard_size=2, fsync=False)
    yield w
    w.abort()


@pytest.mark.parametrize("name, message", [
    ("spikes.v2", "contains a dot"), ("metadata", "reserved"), ("", "must start with a lowercase letter"),
    ("1st", "must start with a lowercase letter"), ("a/b", "must start with a lowercase letter"),
    ("LFP", "lowercase"), ("x" * 49, "at most 48"),
    (3, "must be str"),
])
def test_bad_field_names(writer, name, message):
    with pytest.raises(SampleError, match=message):
        writer.write_sample({name: np.zeros(3)})


@pytest.mark.parametrize("sample", [[np.zeros(3)], None, {}, np.zeros(3), "spikes"])
def test_non_dict_or_empty_sample(writer, sample):
    with pytest.raises(SampleError, match="sample 0 .*non-empty dict"):
        writer.write_sample(sample)


@pytest.mark.parametrize("metadata", [[1, 2], "trial", 3])
def test_non_dict_metadata(writer, metadata):
    with pytest.raises(SampleError, match="metadata must be a dict"):
        writer.write_sample({"x": np.zeros(3)}, metadata=metadata)


def test_unserialisable_metadata(writer):
    with pytest.raises(SampleError, match="field 'metadata'.*JSON"):
        writer.write_sample({"x": np.zeros(3)}, metadata={"when": object()})


def test_field_sets_must_not_change(writer):
    writer.write_sample({"spikes": np.zeros((2, 3), int), "lfp": np.zeros((2, 5))})
    with pytest.raises(SampleError, match=r"sample 1 .*missing \['lfp'\], extra \['eeg'\]"):
        writer.write_sample({"spikes": np.zeros((2, 3), int), "eeg": np.zeros((2, 5))})
    with pytest.raises(SampleError, match=r"missing \['lfp'\], extra \[\]"):
        writer.write_sample({"spikes": np.zeros((2, 3), int)})


@pytest.mark.parametrize("first, second, message", [
    (np.zeros((2, 3), np.int64), np.zeros((2, 3), np.int32), "dtype int32 differs from int64"),
    (np.zeros((2, 3)), np.zeros((2, 3, 1)), "3 dimensions, earlier samples have 2"),
    (np.zeros((2, 3)), np.zeros(6), "1 dimensions, earlier samples have 2"),
])
@pytest.mark.parametrize("field", ["spikes", "lfp", "anything"])
def test_dtype_and_ndim_must_not_change(writer, first, second, message, field):
    if field == "lfp" and first.dtype.kind != "f":
        first, second = first.astype(np.float64), second.astype(np.float32)
        message = "dtype float32 differs from float64"
    writer.write_sample({field: first})
    with pytest.raises(SampleError, match=rf"sample 1 .*field '{field}'.*{message}"):
        writer.write_sample({field: second})


def test_fallback_kind_must_not_change(writer):
    writer.write_sample({"note": "text"})
    with pytest.raises(SampleError, match="field 'note'"):
        writer.write_sample({"note": np.zeros(3)})


@pytest.mark.parametrize("value", [
    np.array([object(), 1], dtype=object), np.array(["a", "bc"]), np.array([b"a"]),
    np.zeros(2, dtype=[("a", "i4"), ("b", "f4")]), np.array(["2020-01-01"], dtype="datetime64[D]"),
])
@pytest.mark.parametrize("field", ["anything", "spikes", "lfp"])
def test_unsupported_dtypes(writer, value, field):
    with pytest.raises(SampleError, match=rf"field '{field}'.*dtype .* is not accepted"):
        writer.write_sample({field: value})


def test_writing_after_finalize_or_abort(tmp_path):
    w = WebDatasetWriter(tmp_path / "a", fsync=False)
    w.write_sample({"x": np.zeros(2)})
    w.finalize()
    with pytest.raises(WriterClosedError, match="finalized or aborted"):
        w.write_sample({"x": np.zeros(2)})
    w2 = WebDatasetWriter(tmp_path / "b", fsync=False)
    w2.abort()
    with pytest.raises(WriterClosedError):
        w2.write_sample({"x": np.zeros(2)})
    with pytest.raises(WriterClosedError, match="aborted"):
        w2.finalize()


def test_finalize_with_zero_samples(tmp_path):
    w = WebDatasetWriter(tmp_path / "ds", fsync=False)
    with pytest.raises(SampleError, match="no samples were written"):
        w.finalize()
    assert _files(tmp_path / "ds") == []


@pytest.mark.parametrize("shard_size", [0, -1, 1.5, "10", True, None])
def test_bad_shard_size(tmp_path, shard_size):
    with pytest.raises(ValueError, match="shard_size must be a positive integer"):
        WebDatasetWriter(tmp_path / "ds", shard_size=shard_size)
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("compression", ["zip", "gzip", "", None, "ZSTD"])
def test_bad_compression(tmp_path, compression):
    with pytest.raises(ValueError, match="unknown compression.*none, zstd, gz, bz2, xz"):
        WebDatasetWriter(tmp_path / "ds", compression=compression)
    assert not (tmp_path / "ds").exists()


def test_modality_options_for_a_missing_field(writer):
    w = WebDatasetWriter(writer.output_dir.with_name("other"), fsync=False,
                         modality_options={"lfp": {"dtype": "float16"}})
    with pytest.raises(SampleError, match=r"modality_options name fields no sample has: \['lfp'\]"):
        w.write_sample({"eeg": np.zeros((2, 3))})
    w.abort()


def test_existing_dataset_refused_then_overwritten(tmp_path, rng):
    out = tmp_path / "ds"
    _write(out, _samples(rng, 7), shard_size=2)
    (out / "notes.txt").write_text("mine")
    before = _files(out)
    with pytest.raises(DatasetExistsError, match="already holds a dataset.*overwrite=True"):
        WebDatasetWriter(out)
    with pytest.raises(DatasetExistsError):
        create_shards_from_arrays(out, {"x": np.zeros((3, 2))})
    assert _files(out) == before
    new = [{"x": np.full(2, 7.0)}]
    summary = _write(out, new, overwrite=True)
    assert summary["samples"] == 1
    assert _files(out) == [".neurocodec", ".shard_000000.idx", "notes.txt", "shard_000000.tar"]
    with Dataset(out) as ds:
        assert len(ds) == 1 and [f.name for f in ds.fields] == ["x", "metadata"]
        np.testing.assert_array_equal(ds[0]["x"], new[0]["x"])


def test_leftover_shards_without_manifest_are_not_a_dataset(tmp_path, rng):
    """An unfinished writer's shards (no manifest) are no dataset for readers, so not for the
    overwrite check either: a new writer clears them and writes afresh, without overwrite."""
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError):
        with WebDatasetWriter(out, shard_size=2, fsync=False) as w:
            for s in _samples(rng, 5):
                w.write_sample(s)
            raise RuntimeError("interrupted")
    assert _files(out) == [".shard_000000.idx", ".shard_000001.idx", "shard_000000.tar", "shard_000001.tar"]
    with pytest.raises(DatasetError, match="no .neurocodec/dataset_metadata.json"):
        Dataset(out)
    (out / "notes.txt").write_text("mine")
    new = [{"x": np.full(2, 7.0)}]
    assert _write(out, new)["samples"] == 1
    assert _files(out) == [".neurocodec", ".shard_000000.idx", "notes.txt", "shard_000000.tar"]
    with Dataset(out) as ds:
        assert len(ds) == 1 and ds.verify_all() == 1
        np.testing.assert_array_equal(ds[0]["x"], new[0]["x"])


def test_rejected_sample_leaves_writer_usable(tmp_path, rng):
    out = tmp_path / "ds"
    good = _samples(rng, 3)
    with WebDatasetWriter(out, shard_size=2, fsync=False) as w:
        w.write_sample(good[0])
        with pytest.raises(SampleError):
            w.write_sample({**good[1], "lfp": np.zeros((3, 20), dtype=np.float64)})
        with pytest.raises(SampleError):
            w.write_sample(good[1], metadata=["not", "a", "dict"])
        assert w.write_sample(good[1]) == "sample_000000002"
        assert w.write_sample(good[2]) == "sample_000000003"
    with Dataset(out) as ds:
        assert len(ds) == 3 and ds.verify_all() == 3
        for want, got in zip(good, ds):
            np.testing.assert_array_equal(got["lfp"], want["lfp"])


def test_rejected_first_sample_does_not_fix_the_schema(tmp_path):
    out = tmp_path / "ds"
    with WebDatasetWriter(out, fsync=False) as w:
        with pytest.raises(SampleError, match="field 'video'"):
            w.write_sample({"video": np.zeros((2, 4, 4)), "note": "x"})
        assert w.write_sample({"spikes": np.ones((2, 3), dtype=np.int16)}) == "sample_000000001"
    with Dataset(out) as ds:
        assert [f.name for f in ds.fields] == ["spikes", "metadata"] and ds.fields[0].dtype == "<i2"


# -- create_shards_from_arrays --------------------------------------------------------------------

def test_create_shards_from_arrays_round_trip(tmp_path, rng):
    data = {"spikes": rng.poisson(1, (5, 6, 3)), "lfp": torch.randn(5, 2, 8), "pos": rng.standard_normal(5),
            "video": rng.integers(0, 256, (5, 2, 4, 4))}
    meta = [{"trial": i} for i in range(5)]
    summary = create_shards_from_arrays(tmp_path / "ds", data, shard_size=2, compression="bz2", metadata=meta,
                                        fsync=False)
    assert (summary["samples"], summary["shards"]) == (5, 3)
    with Dataset(tmp_path / "ds") as ds:
        dtypes = {f.name: f.dtype for f in ds.fields}
        assert dtypes == {"lfp": "<f4", "pos": "<f8", "spikes": "<i8", "video": "|u1", "metadata": None}
        for i, s in enumerate(ds):
            np.testing.assert_array_equal(s["spikes"], data["spikes"][i])
            np.testing.assert_array_equal(s["lfp"], data["lfp"][i].numpy())
            assert s["pos"].shape == () and s["pos"] == data["pos"][i]  # a 0-d array, not JSON
            np.testing.assert_array_equal(s["video"], data["video"][i])
            assert s["metadata"] == meta[i]


@pytest.mark.parametrize("data, message", [
    ({"a": np.zeros((4, 2)), "b": np.zeros((5, 2))}, r"differ in their first dimension: \{'a': 4, 'b': 5\}"),
    ({"a": [[1, 2], [3, 4]]}, r"data_dict\['a'\] must be an array or tensor"),
    ({"a": 3.0}, r"data_dict\['a'\] must be an array"),
    ({"a": {"x": 1}}, r"data_dict\['a'\] must be an array"),
    ({"a": np.array(["x", "y"])}, r"data_dict\['a'\] row 0 .*dtype <U1 is not accepted"),
    ({"a": np.zeros(3), "b": np.array([object()] * 3)}, r"data_dict\['b'\] row 0"),
    ({"video": np.zeros((3, 2, 2))}, r"data_dict\['video'\] row 0 \(video\).*float64"),
    ({"video": np.concatenate([np.zeros((2, 2, 2), int), np.full((1, 2, 2), 999)])},
     r"data_dict\['video'\] row 2 \(video\).*uint8"),
    ({"a.b": np.zeros((3, 2))}, "contains a dot"),
    ({"metadata": np.zeros((3, 2))}, "reserved"),
    ({"a": np.zeros((0, 2))}, "no samples"),
    ({}, "non-empty dict"),
    ({"spikes": np.zeros((3, 2)), "lfp": np.zeros((3, 2), dtype=np.complex64)}, r"data_dict\['lfp'\]"),
])
def test_create_shards_from_arrays_validates_before_writing(tmp_path, data, message):
    out = tmp_path / "ds"
    with pytest.raises(SampleError, match=message):
        create_shards_from_arrays(out, data, shard_size=1)
    assert not out.exists()


@pytest.mark.parametrize("options, message", [
    ({"metadata": [{}, {}]}, "metadata holds 2 entries for 3 samples"),
    ({"metadata": [{}, "b", {}]}, r"metadata\[1\] must be a dict or None, got str"),
    ({"modality_options": {"lfp": {"dtype": "float16"}}}, r"modality_options name fields .*\['lfp'\]"),
    ({"modality_options": {"x": {"dtype": "float8"}}}, r"data_dict\['x'\] row 0 .*float8"),
])
def test_create_shards_from_arrays_metadata_and_options(tmp_path, options, message):
    out = tmp_path / "ds"
    with pytest.raises(SampleError, match=message):
        create_shards_from_arrays(out, {"x": np.zeros((3, 2))}, **options)
    assert not out.exists()


def test_overwrite_refuses_a_directory_named_like_a_dataset_file_and_removes_nothing(tmp_path, rng):
    out = tmp_path / "ds"
    with WebDatasetWriter(out, shard_size=2, fsync=False) as w:
        for s in _samples(rng, 3):
            w.write_sample(s)
    (out / "shard_000009.tar").mkdir()
    before = _files(out)
    with pytest.raises(DatasetError, match=r"shard_000009\.tar is a directory"):
        WebDatasetWriter(out, overwrite=True)
    assert _files(out) == before                     # the dataset is still whole
    Dataset(out).close()
