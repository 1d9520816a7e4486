"""Integer NWB signals with a scale stay integers (issue 14, point 2).

Real NWB files written by pynwb (tests/nwbfiles.py) with int16 ElectricalSeries that declare a
`conversion`, `offset` and `channel_conversion` are converted twice: with neural codecs (the
default) and with `codecs="npy"` (float32 physical units, as before). The neural shards must
hold the raw integers (parsed here from the tar with struct, zstandard and numpy, following
docs/format.md, section 7.6), the session record the scale, and decoding must give exactly the npy
conversion's float32 values, or with `raw=True` exactly the integers h5py reads from the file.
"""

from __future__ import annotations

import struct
import tarfile

import h5py
import numpy as np
import pytest
import zstandard

import nwbfiles
from neurocodec import Dataset, NWBToWebDatasetConverter
from neurocodec.loader.dataloader import create_webdataset_dataloader

RATE, T0 = 1250.0, 2.0
CONVERSION, OFFSET = 2.5e-6, 0.125
CC = np.array([1.0, 2.0, 0.5, 4.0], dtype=np.float32)
LFP = "/processing/ecephys/LFP/lfp_scaled"
RAW = "/acquisition/raw_scaled"


def session(path, rng):
    """An LFP series and a raw acquisition series, both int16 with a scale, and an unscaled
    int16 and a scaled float32 series for comparison."""
    nwb = nwbfiles.new_file()
    raw = rng.integers(-2000, 2000, (5000, 4)).astype(np.int16)
    lfp = nwbfiles.electrical_series(nwb, "lfp_scaled", raw, rate=RATE, starting_time=T0, conversion=CONVERSION,
                                     channel_conversion=CC, offset=OFFSET)
    nwbfiles.add_lfp(nwb, lfp)
    nwb.add_acquisition(nwbfiles.electrical_series(nwb, "raw_scaled", raw[::-1].copy(), rate=RATE, starting_time=T0,
                                                   conversion=0.195e-6, offset=-1e-3))
    nwb.add_acquisition(nwbfiles.electrical_series(nwb, "eeg_plain", raw[:, :2].copy(), rate=RATE, starting_time=T0))
    nwb.add_acquisition(nwbfiles.electrical_series(nwb, "float_scaled", raw.astype(np.float32), rate=RATE,
                                                   starting_time=T0, conversion=CONVERSION, offset=OFFSET))
    return nwbfiles.write(nwb, path)


def convert(tmp_path, files, name, codecs, **kwargs):
    converter = NWBToWebDatasetConverter(tmp_path / name, 8, progress=False, fsync=False, codecs=codecs,
                                         bin_size_ms=8, sequence_length=50, overlap=0.5, **kwargs)
    converter.convert_nwb_files(files)
    converter.finalize()
    return tmp_path / name


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("int")
    path = session(tmp / "s.nwb", np.random.default_rng(7))
    kwargs = {"modalities": {"lfp": "lfp", "ephys": "lfp", "eeg": "eeg", "floats": "lfp"},
              "series": {"ephys": "raw_scaled", "eeg": "eeg_plain", "floats": "float_scaled"}}
    return {"file": path, "neural": convert(tmp, [path], "neural", "neural", **kwargs),
            "npy": convert(tmp, [path], "npy", "npy", **kwargs)}


def field(ds, name):
    return next(f for f in ds.manifest.fields if f.name == name)


def window(path, obj, start):
    """The window's integers as h5py reads them from the file."""
    first = int(np.ceil((start - T0) * RATE - 1e-6))
    with h5py.File(path, "r") as f:
        return f[obj + "/data"][first:first + 500]


def members(root, suffix):
    """(name, payload) of every member whose name ends with `suffix`, read with tarfile."""
    out = []
    for shard in sorted(root.glob("*.tar")):
        with tarfile.open(shard) as tar:
            out += [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(suffix)]
    return out


def unpack(payload):
    """Header and integers of a scaled-int payload with the signal chain (delta, shuffle, zstd,
    channel-major order), undone with struct, zstandard and numpy."""
    magic, version, code, ndim, flags, conversion, offset = struct.unpack_from("<4sBBBBdd", payload)
    shape = struct.unpack_from(f"<{ndim}Q", payload, 24)
    end = 24 + 8 * ndim
    factors = np.frombuffer(payload, "<f8", shape[1], end) if flags & 1 else None
    end += 8 * shape[1] if flags & 1 else 0
    plain = zstandard.ZstdDecompressor().decompress(payload[end:])
    deltas = np.frombuffer(plain, np.uint8).reshape(2, -1).T.copy().view("<i2").reshape(-1)
    values = np.cumsum(deltas, dtype=np.int16).reshape(shape[::-1]).T  # channel after channel
    return {"magic": magic, "version": version, "code": code, "conversion": conversion, "offset": offset,
            "factors": factors, "values": values}


def test_stored_members_are_the_integers(converted):
    root = converted["neural"]
    with Dataset(root) as ds:
        starts = {ds[i]["metadata"]["window_index"]: ds[i]["metadata"]["start_time"] for i in range(len(ds))}
    stored = members(root, ".lfp.sci")
    assert len(stored) == len(starts) > 10
    assert not members(root, ".lfp.npy")
    by_start = sorted(starts.values())
    for (_, payload), start in zip(sorted(stored), by_start):
        got = unpack(payload)
        assert (got["magic"], got["version"], got["code"]) == (b"NCSI", 1, 1)
        assert (got["conversion"], got["offset"]) == (CONVERSION, OFFSET)
        assert np.array_equal(got["factors"], CC.astype(np.float64))
        assert np.array_equal(got["values"], window(converted["file"], LFP, start))
        assert len(payload) < 500 * 4 * 4 / 2  # far below the float32 window


def test_manifest_records_the_scale_once_per_session(converted):
    with Dataset(converted["neural"]) as ds:
        (record,) = ds.manifest.extra["sessions"].values()
        lfp, ephys = record["series"]["lfp"], record["series"]["ephys"]
        assert (lfp["object"], lfp["dtype"], lfp["raw_integers"]) == (LFP, "int16", True)
        assert (lfp["conversion"], lfp["offset"]) == (CONVERSION, OFFSET)
        assert lfp["channel_conversion"] == CC.astype(np.float64).tolist()
        assert (ephys["object"], ephys["conversion"], ephys["offset"], ephys["channel_conversion"]) == \
            (RAW, 0.195e-6, -1e-3, None)
        assert record["series"]["eeg"]["raw_integers"] is False  # unscaled: plain int16 as before
        assert record["series"]["floats"]["raw_integers"] is False
        codec = field(ds, "lfp").codec
        assert (codec["id"], codec["raw_dtype"], codec["order"]) == ("scaled-int", "<i2", "F")
        assert [f["id"] for f in codec["filters"]] == ["delta", "shuffle", "zstd"]
        assert (field(ds, "lfp").dtype, field(ds, "lfp").shape) == ("<f4", (500, 4))
    with Dataset(converted["npy"]) as ds:
        (record,) = ds.manifest.extra["sessions"].values()
        assert record["series"]["lfp"]["raw_integers"] is False
        assert {f.codec["id"] for f in ds.manifest.fields if f.name != "metadata"} == {"npy"}


def test_decoding_gives_exactly_the_npy_conversion(converted):
    with Dataset(converted["neural"]) as neural, Dataset(converted["npy"]) as plain:
        assert len(neural) == len(plain)
        for name in ("lfp", "ephys", "eeg", "floats"):
            assert (field(neural, name).dtype, field(neural, name).shape) == \
                (field(plain, name).dtype, field(plain, name).shape)
        for i in range(len(neural)):
            a, b = neural[i], plain[i]
            assert a["metadata"]["start_time"] == b["metadata"]["start_time"]
            for name in ("lfp", "ephys", "eeg", "floats"):
                assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes(), (i, name)
        assert field(neural, "eeg").codec["id"] == "npy" and field(neural, "eeg").dtype == "<i2"
        assert field(neural, "floats").codec["id"] == "npy" and field(neural, "floats").dtype == "<f4"


def test_raw_option_gives_the_integers_of_the_file(converted):
    with Dataset(converted["neural"], decode={"lfp": {"raw": True}, "ephys": {"raw": True}}) as ds:
        assert field(ds, "lfp").dtype == "<f4"  # the manifest's field; decoded values are int16
        for i in range(len(ds)):
            sample = ds[i]
            start = sample["metadata"]["start_time"]
            for name, obj in (("lfp", LFP), ("ephys", RAW)):
                assert sample[name].dtype == np.int16
                assert np.array_equal(sample[name], window(converted["file"], obj, start)), (i, name)


def test_float16_option_keeps_the_float_conversion(tmp_path, rng):
    path = session(tmp_path / "s.nwb", rng)
    root = convert(tmp_path, [path], "half", "neural", modalities=["lfp"],
                   modality_options={"lfp": {"dtype": "float16"}})
    with Dataset(root) as ds:
        assert (field(ds, "lfp").codec["id"], field(ds, "lfp").dtype) == ("npy", "<f2")


def test_fill_windows_decode_to_zeros_as_before(tmp_path, rng):
    """coverage='fill': a window the scaled series does not cover is zeros either way."""
    nwb = nwbfiles.new_file()
    raw = rng.integers(-2000, 2000, (2500, 4)).astype(np.int16)
    nwbfiles.add_lfp(nwb, nwbfiles.electrical_series(nwb, "lfp", raw, rate=RATE, starting_time=T0,
                                                     conversion=CONVERSION, offset=OFFSET, channel_conversion=CC))
    nwb.add_acquisition(nwbfiles.electrical_series(nwb, "eeg", raw[:, :2].copy(), rate=RATE, starting_time=0.0))
    path = nwbfiles.write(nwb, tmp_path / "fill.nwb")
    common = {"modalities": ["lfp", "eeg"], "coverage": "fill"}
    with Dataset(convert(tmp_path, [path], "n", "neural", **common)) as neural, \
            Dataset(convert(tmp_path, [path], "p", "npy", **common)) as plain:
        missing = [i for i in range(len(neural)) if "lfp" in neural[i]["metadata"]["missing"]]
        assert missing and field(neural, "lfp").codec["id"] == "scaled-int"
        for i in range(len(neural)):
            assert neural[i]["lfp"].tobytes() == plain[i]["lfp"].tobytes()
        assert not neural[missing[0]]["lfp"].any()


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("raw", [False, True])
def test_dataloader_with_two_workers(converted, raw):
    options = {"lfp": {"raw": True}} if raw else None
    with Dataset(converted["neural"], decode=options) as ds:
        want = {ds[i]["metadata"]["start_time"]: ds[i]["lfp"] for i in range(len(ds))}
    loader = create_webdataset_dataloader(converted["neural"], batch_size=4, num_workers=2, shuffle=False,
                                          decode=options)
    seen = 0
    for batch in loader:
        values = batch["lfp"].numpy()
        assert values.dtype == (np.int16 if raw else np.float32) and values.shape[1:] == (500, 4)
        for meta, value in zip(batch["metadata"], values):
            assert value.tobytes() == want[meta["start_time"]].tobytes()
            seen += 1
    assert seen == len(want)


def test_fmri_behavior_and_calcium_integers(tmp_path, rng):
    """Scaled integer volumes (C order), a 1-D timestamped behavior series and calcium traces:
    stored with scaled-int, decoded exactly as the npy conversion."""
    from pynwb import TimeSeries
    from pynwb.image import ImageSeries

    nwb = nwbfiles.new_file()
    volumes = rng.integers(0, 4000, (60, 6, 5, 3)).astype(np.int16)
    nwb.add_acquisition(ImageSeries(name="bold", data=volumes, unit="a.u.", rate=20.0, starting_time=0.0,
                                    dimension=[6, 5, 3], conversion=0.01, offset=-3.0))
    stamps = np.arange(3000) / 1000.0 + rng.uniform(0, 2e-4, 3000)
    position = rng.integers(-500, 500, 3000).astype(np.int16)
    nwb.add_acquisition(TimeSeries(name="speed", data=position, unit="cm/s", timestamps=stamps, conversion=0.1))
    nwb.add_acquisition(TimeSeries(name="traces", data=rng.integers(0, 1 << 15, (300, 7)).astype(np.uint16),
                                   unit="a.u.", rate=100.0, conversion=1 / 65535, offset=0.01))
    path = nwbfiles.write(nwb, tmp_path / "mixed.nwb")
    common = {"modalities": ["fmri", "behavior", "calcium"], "series": {"behavior": "speed", "calcium": "traces"}}
    with Dataset(convert(tmp_path, [path], "n", "neural", **common)) as neural, \
            Dataset(convert(tmp_path, [path], "p", "npy", **common)) as plain:
        assert field(neural, "fmri").codec["order"] == "C"
        assert field(neural, "calcium").codec["raw_dtype"] == "<u2"
        for name in ("fmri", "behavior", "calcium"):
            assert field(neural, name).codec["id"] == "scaled-int"
            assert (field(neural, name).dtype, field(neural, name).shape) == \
                (field(plain, name).dtype, field(plain, name).shape) == ("<f4", field(plain, name).shape)
        assert len(neural) == len(plain) > 3
        for i in range(len(neural)):
            for name in ("fmri", "behavior", "calcium"):
                assert neural[i][name].tobytes() == plain[i][name].tobytes(), (i, name)


def test_sessions_of_different_scales_merge(tmp_path, rng):
    """Two files whose int16 LFP has another conversion, offset and channel_conversion: their
    parts merge (the field's config is the same) and each window decodes with its own scale."""
    paths = []
    for k, (conversion, offset, cc) in enumerate([(2.5e-6, 0.125, CC), (1e-3, -0.5, None)]):
        nwb = nwbfiles.new_file(identifier=f"id{k}", session_id=f"s{k}")
        raw = rng.integers(-2000, 2000, (2500, 4)).astype(np.int16)
        extra = {} if cc is None else {"channel_conversion": cc}
        nwbfiles.add_lfp(nwb, nwbfiles.electrical_series(nwb, "lfp", raw, rate=RATE, starting_time=T0,
                                                         conversion=conversion, offset=offset, **extra))
        paths.append(nwbfiles.write(nwb, tmp_path / f"s{k}.nwb"))
    with Dataset(convert(tmp_path, paths, "n", "neural", modalities=["lfp"], workers=2)) as neural, \
            Dataset(convert(tmp_path, paths, "p", "npy", modalities=["lfp"])) as plain:
        assert field(neural, "lfp").codec["id"] == "scaled-int" and len(neural) == len(plain)
        sessions = {neural[i]["metadata"]["session"] for i in range(len(neural))}
        assert len(sessions) == 2
        for i in range(len(neural)):
            assert neural[i]["lfp"].tobytes() == plain[i]["lfp"].tobytes(), i
        records = neural.manifest.extra["sessions"]
        assert sorted(r["series"]["lfp"]["conversion"] for r in records.values()) == [2.5e-6, 1e-3]


def test_sessions_of_int_and_float_signals_fall_back_to_plain_npy_for_that_field(tmp_path, rng):
    """A scaled int16 session and a float32 one would store lfp with different codecs: the
    converter converts the int16 part again with lfp plain, says so, records it, and the dataset
    holds exactly what codecs='npy' gives, while spikes stay events."""
    paths = []
    for k, dtype in enumerate((np.int16, np.float32)):
        nwb = nwbfiles.new_file(identifier=f"id{k}", session_id=f"s{k}")
        raw = rng.integers(-2000, 2000, (2500, 4)).astype(dtype)
        nwbfiles.add_units(nwb, nwbfiles.random_spikes(rng, 2, T0, T0 + 2.5, mean=30))
        nwbfiles.add_lfp(nwb, nwbfiles.electrical_series(nwb, "lfp", raw, rate=RATE, starting_time=T0,
                                                         conversion=2.5e-6))
        paths.append(nwbfiles.write(nwb, tmp_path / f"s{k}.nwb"))
    with pytest.warns(UserWarning, match=r"lfp \(npy in 1 file, scaled-int in 1 file\): storing lfp as plain .npy"):
        neural = convert(tmp_path, paths, "n", "neural", modalities=["spikes", "lfp"])
    with Dataset(neural) as ds, Dataset(convert(tmp_path, paths, "p", "npy", modalities=["spikes", "lfp"])) as plain:
        assert field(ds, "lfp").codec == field(plain, "lfp").codec and field(ds, "spikes").codec["id"] == "spike-events"
        assert ds.manifest.extra["conversion"]["plain_fields"] == ["lfp"]
        assert len(ds) == len(plain)
        for a, b in zip(ds, plain):
            assert a["lfp"].tobytes() == b["lfp"].tobytes() and np.array_equal(a["spikes"], b["spikes"])
