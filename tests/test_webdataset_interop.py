"""neurocodec shards read by the real `webdataset` library, as-is.

`wds.WebDataset(urls, shardshuffle=False).decode()` with no handlers uses webdataset's default
decoders (`webdataset.autodecode.basichandlers`, preceded by `gzfilter`): `.npy` through
`numpy.lib.format.read_array` (pickle not allowed), `.json` through `json.loads`, `.txt` as
UTF-8; `.bin` stays bytes; a `.gz` suffix is gunzipped first. webdataset groups members into
samples by the part of the member name before the first dot (`__key__`), and the rest
(`<field>.<ext>`) becomes the sample's dict key.

One documented difference: the spikes modality packs integer counts into the smallest integer
dtype that holds them (uint8 here, uint16 where a count exceeds 255) and neurocodec restores the
written dtype on read; webdataset has no manifest and sees the packed dtype. Values are equal
exactly; only the dtype differs, and it always widens losslessly to ours.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neurocodec import Dataset, SampleError, WebDatasetWriter, create_shards_from_arrays
from neurocodec.plugin.codecs import smallest_integer_dtype

wds = pytest.importorskip("webdataset")

EXTENSIONS = {"spikes": "npy", "lfp": "npy", "eeg": "npy", "fmri": "npy", "video": "npy",
              "behavior": "npy", "notes": "txt", "raw": "bin", "info": "json", "metadata": "json"}
WDS_KEYS = {"__key__", "__url__", "__local_path__"}


def _samples(rng: np.random.Generator, count: int) -> list[dict]:
    samples = []
    for i in range(count):
        spikes = rng.poisson(2.0, (30, 7)).astype(np.int64)
        if i == 2:
            spikes[0, 0] = 300  # this member packs to uint16, the others to uint8
        samples.append({
            "spikes": spikes,
            "lfp": rng.standard_normal((4, 64)).astype(np.float32),
            "eeg": rng.standard_normal((64, 3)),
            "fmri": rng.integers(-2000, 2000, (2, 5, 4, 3), dtype=np.int16),
            "video": rng.integers(0, 256, (2, 8, 6, 3), dtype=np.uint8),
            "behavior": rng.standard_normal((30, 2)).astype(np.float32),
            "notes": f"trial {i}: ünïcode ✓",
            "raw": bytes(rng.integers(0, 256, 17, dtype=np.uint8)),
            "info": {"session": "s1", "trial": i, "ok": i % 2 == 0, "gain": [1.5, None]},
        })
    return samples


@pytest.mark.parametrize("compression", ["none", "gz"])
def test_webdataset_reads_every_sample_as_neurocodec_does(tmp_path: Path, rng, compression: str) -> None:
    """Uncompressed shards are the contract; gz shards work too through webdataset's gzfilter."""
    samples = _samples(rng, 7)
    out = tmp_path / "ds"
    with WebDatasetWriter(out, shard_size=3, compression=compression, fsync=False) as writer:
        for i, sample in enumerate(samples):
            writer.write_sample(sample, metadata={"trial_id": i, "condition": "left" if i % 2 else "right"})
    urls = [str(p) for p in sorted(out.glob("shard_*.tar"))]
    assert len(urls) == 3

    got = list(wds.WebDataset(urls, shardshuffle=False).decode())
    with Dataset(out) as ds:
        ours = list(ds)
    assert len(got) == len(ours) == 7
    suffix = ".gz" if compression == "gz" else ""
    for i, (theirs, mine, written) in enumerate(zip(got, ours, samples)):
        assert theirs["__key__"] == mine["__key__"] == f"sample_{i + 1:09d}"
        fields = {f"{name}.{ext}{suffix}" for name, ext in EXTENSIONS.items()}
        assert set(theirs) - WDS_KEYS == fields
        value = {name: theirs[f"{name}.{ext}{suffix}"] for name, ext in EXTENSIONS.items()}
        for name in ("lfp", "eeg", "fmri", "video", "behavior"):
            assert isinstance(value[name], np.ndarray)
            assert value[name].dtype == mine[name].dtype == written[name].dtype, name
            assert value[name].shape == mine[name].shape, name
            assert value[name].tobytes() == mine[name].tobytes() == written[name].tobytes(), name
        # Spikes: the packed dtype, equal values (see the module docstring).
        packed = value["spikes"]
        assert packed.dtype == smallest_integer_dtype(written["spikes"]) == (np.uint16 if i == 2 else np.uint8)
        assert mine["spikes"].dtype == np.int64 and np.can_cast(packed.dtype, np.int64)
        assert np.array_equal(packed, mine["spikes"]) and np.array_equal(packed, written["spikes"])
        assert value["notes"] == mine["notes"] == written["notes"]
        assert value["raw"] == mine["raw"] == written["raw"]
        assert value["info"] == mine["info"] == {**written["info"], "gain": [1.5, None]}
        assert value["metadata"] == mine["metadata"] == {"trial_id": i, "condition": "left" if i % 2 else "right"}


def test_webdataset_reads_create_shards_from_arrays_output(tmp_path: Path, rng) -> None:
    data = {"spikes": rng.poisson(1.0, (5, 10, 4)), "behavior": rng.standard_normal((5, 10, 2))}
    create_shards_from_arrays(tmp_path / "ds", data, shard_size=2, fsync=False)
    got = list(wds.WebDataset(sorted(str(p) for p in (tmp_path / "ds").glob("*.tar")),
                              shardshuffle=False).decode())
    assert [s["__key__"] for s in got] == [f"sample_{i:09d}" for i in range(1, 6)]
    for i, sample in enumerate(got):
        assert np.array_equal(sample["spikes.npy"], data["spikes"][i])
        assert sample["behavior.npy"].tobytes() == data["behavior"][i].tobytes()
        assert sample["metadata.json"] == {}


@pytest.mark.parametrize("name", ["lfp.raw", "a.b", ".hidden", "spikes."])
def test_writer_refuses_field_names_with_a_dot(tmp_path: Path, name: str) -> None:
    with WebDatasetWriter(tmp_path / "ds", fsync=False) as writer:
        with pytest.raises(SampleError, match="dot"):
            writer.write_sample({name: np.zeros(3), "behavior": np.zeros((2, 2))})
        writer.write_sample({"behavior": np.zeros((2, 2))})  # the writer stays usable
    with pytest.raises(SampleError, match="dot"):
        create_shards_from_arrays(tmp_path / "other", {name: np.zeros((2, 3))}, fsync=False)
    assert not (tmp_path / "other").exists()


def test_writer_refuses_samples_whose_fields_differ(tmp_path: Path) -> None:
    first = {"spikes": np.ones((4, 2), np.int64), "behavior": np.zeros((4, 2))}
    with WebDatasetWriter(tmp_path / "ds", shard_size=2, fsync=False) as writer:
        writer.write_sample(first)
        with pytest.raises(SampleError, match=r"missing \['behavior'\]"):
            writer.write_sample({"spikes": first["spikes"]})
        with pytest.raises(SampleError, match=r"extra \['lfp'\]"):
            writer.write_sample({**first, "lfp": np.zeros((2, 8), np.float32)})
        with pytest.raises(SampleError, match=r"missing \['behavior'\], extra \['speed'\]"):
            writer.write_sample({"spikes": first["spikes"], "speed": first["behavior"]})
        writer.write_sample(first)
    with Dataset(tmp_path / "ds") as ds:
        assert len(ds) == 2 and [f.name for f in ds.fields] == ["behavior", "spikes", "metadata"]
    got = list(wds.WebDataset([str(tmp_path / "ds" / "shard_000000.tar")], shardshuffle=False).decode())
    assert [set(s) - WDS_KEYS for s in got] == [{"behavior.npy", "spikes.npy", "metadata.json"}] * 2
