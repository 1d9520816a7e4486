"""The `spike-events` and `spike-observed` codecs (neurocodec/plugin/event_codecs.py): each
window's spikes as integer ticks, decoded at load time to counts at any bin size dividing the
window, or back to the events; observation intervals decoded to the mask at the same bin size.

Datasets are written by `WebDatasetWriter` and read by `Dataset` and the DataLoader. Expected
values come from numpy on the integer ticks the test itself drew (no neurocodec code), and
hostile payloads are built with struct from the layout docs/format.md (section 7.7) specifies,
then spliced into valid shards with everything around them made consistent (tests/hostile.py),
so that they reach the codec.
"""

from __future__ import annotations

import re
import struct
import zlib

import numpy as np
import pytest
import torch

import hostile as h
from hostile_corpus import Expect, read_rejected
from neurocodec import Dataset, WebDatasetWriter, create_webdataset_dataloader
from neurocodec.dataset.merge import merge_datasets
from neurocodec.errors import SampleError, ShardError, UnknownCodecError
from neurocodec.plugin import ObservedIntervals, SpikeEvents
from neurocodec.testing import check_codec

HEADER = struct.Struct("<4sBBBBIIIII")  # magic, version, 3 widths, tick_hz, window, units, spikes, step
HZ, UNITS, BINS, BIN_MS = 30_000, 4, 100, 10
WINDOW = HZ * BINS * BIN_MS // 1000
EVENTS = {"id": "spike-events", "bins": BINS, "bin_size_ms": BIN_MS}
OBSERVED = {"id": "spike-observed", "bins": BINS, "bin_size_ms": BIN_MS, "follows": "spikes"}


def draw(rng, windows=6, units=UNITS, hz=HZ, window=WINDOW) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ticks, units) per window, sorted by (tick, unit): ties, bin edges, both window ends, a
    silent unit and an empty window included."""
    out = []
    for i in range(windows):
        n = 0 if i == 2 else int(rng.integers(50, 400))
        ticks = rng.integers(0, window, n)
        if n:
            ticks[:6] = [0, window - 1, window // 2, window // 2, hz // 100, 3 * hz // 100 - 1]
        unit = rng.integers(0, units, n)
        unit[unit == 1] = 0  # unit 1 never fires
        order = np.lexsort((unit, ticks))
        out.append((ticks[order], unit[order]))
    return out


def binned(ticks: np.ndarray, units: np.ndarray, per_bin: int, bins: int, unit_count: int) -> np.ndarray:
    """Counts by numpy alone: bin k holds ticks in [k*per_bin, (k+1)*per_bin)."""
    counts = np.zeros((bins, unit_count), np.int64)
    np.add.at(counts, (ticks // per_bin, units), 1)
    return counts


def write(path, windows, *, units=UNITS, hz=HZ, compression="none", observed=None, codec=EVENTS):
    with WebDatasetWriter(path, 4, compression, codecs={"spikes": codec, **({"spikes_observed": OBSERVED}
                                                                             if observed else {})},
                          fsync=False) as writer:
        for i, (ticks, unit) in enumerate(windows):
            sample = {"spikes": SpikeEvents.from_ticks(ticks, unit, units, hz)}
            if observed:
                sample["spikes_observed"] = observed[i]
            writer.write_sample(sample)
    return path


@pytest.fixture
def windows():
    return draw(np.random.default_rng(1))


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_events_round_trip_exactly(tmp_path, windows, compression):
    path = write(tmp_path / "ds", windows, compression=compression)
    with Dataset(path, decode={"spikes": {"as": "events"}}) as ds:
        assert ds.fields[0].kind == "events"
        for i, (ticks, unit) in enumerate(windows):
            events = ds[i]["spikes"]
            assert isinstance(events, SpikeEvents) and events.tick_hz == HZ and events.unit_count == UNITS
            assert events.times.dtype == np.float64 and np.array_equal(events.times, ticks / HZ)
            assert np.array_equal(events.units, unit)
    with Dataset(path) as ds:  # default: counts at the stored bin size, in the manifest's form
        field = ds.fields[0]
        assert (field.dtype, field.shape, field.codec["id"]) == ("<i4", (BINS, UNITS), "spike-events")
        assert field.max_value_bytes == BINS * UNITS * 4
        for i, (ticks, unit) in enumerate(windows):
            counts = ds[i]["spikes"]
            assert counts.dtype == np.int32
            np.testing.assert_array_equal(counts, binned(ticks, unit, HZ * BIN_MS // 1000, BINS, UNITS))


@pytest.mark.parametrize("bin_ms", [1, 2, 5, 20, 50, 100, 1000, 0.5, 2.5])
def test_counts_at_any_bin_size_dividing_the_window(tmp_path, windows, bin_ms):
    path = write(tmp_path / "ds", windows)
    bins = round(BINS * BIN_MS / bin_ms)
    with Dataset(path, decode={"spikes": {"bin_size_ms": bin_ms}}) as ds:
        assert ds.fields[0].shape == (bins, UNITS) and ds.fields[0].max_value_bytes == bins * UNITS * 4
        assert ds.manifest.fields[0].shape == (BINS, UNITS)
        for i, (ticks, unit) in enumerate(windows):
            np.testing.assert_array_equal(ds[i]["spikes"], binned(ticks, unit, round(HZ * bin_ms / 1000), bins, UNITS))


def observed_windows(rng, count):
    """Intervals in ticks on and off the 10 ms and 5 ms edges, overlapping, past both window ends."""
    out = []
    for i in range(count):
        bounds = np.array([[0, 150], [-300, 300 * 7], [300 * 20, 300 * 20 + 1], [450, 300 * 55],
                           [300 * 54, WINDOW + 10], [WINDOW - 200, WINDOW], [5 + i, 300 * 90 + 150]])
        unit = np.array([0, 2, 2, 3, 3, 2, 0])
        out.append((bounds, unit))
    return out


def mask(bounds, unit, per_bin, bins):
    """The rule tick by tick: bin k of unit u is observed when every tick of [k*b, (k+1)*b) lies in
    one of u's intervals (so in their union: touching or overlapping intervals count as one)."""
    covered = np.zeros((bins * per_bin, UNITS), bool)
    for (a, z), u in zip(bounds, unit):
        covered[max(a, 0):max(z, 0), u] = True
    return covered.reshape(bins, per_bin, UNITS).all(axis=1)


def test_observed_mask_follows_the_spikes_bin_size(tmp_path, windows):
    rng = np.random.default_rng(2)
    intervals = observed_windows(rng, len(windows))
    values = [ObservedIntervals.from_ticks(b, u, UNITS, HZ) for b, u in intervals]
    path = write(tmp_path / "ds", windows, observed=values)
    for bin_ms in (None, 5, 20, 50, 1):
        decode = None if bin_ms is None else {"spikes": {"bin_size_ms": bin_ms}}
        per_bin = HZ * (bin_ms or BIN_MS) // 1000
        with Dataset(path, decode=decode) as ds:
            assert ds.fields[1].shape == (WINDOW // per_bin, UNITS)
            for i, (bounds, unit) in enumerate(intervals):
                got = ds[i]["spikes_observed"]
                assert got.dtype == bool
                np.testing.assert_array_equal(got, mask(bounds, unit, per_bin, WINDOW // per_bin))
    with Dataset(path, decode={"spikes": {"as": "events"}}) as ds:  # the mask stays at the stored size
        np.testing.assert_array_equal(ds[0]["spikes_observed"], mask(*intervals[0], HZ // 100, BINS))


def test_decode_options_are_checked_in_words(tmp_path, windows):
    path = write(tmp_path / "ds", windows)
    with pytest.raises(ValueError, match=r"bin_size_ms=7 does not divide the window of 1000 ms.*allowed: 1, 2, 4, "
                                         r"5, 8, 10, 20, 25, 40, 50, 100, 125, 200, 250, 500, 1000 ms"):
        Dataset(path, decode={"spikes": {"bin_size_ms": 7}})
    for bad in (0, -5, float("nan"), "10", True):
        with pytest.raises(ValueError, match="bin_size_ms must be a positive number of milliseconds"):
            Dataset(path, decode={"spikes": {"bin_size_ms": bad}})
    with pytest.raises(ValueError, match=r"bin_size_ms=1e-06 makes values of up to 16000000000 bytes "
                                         r"\(1000000000 bins of 4 units\), above the ceiling"):
        Dataset(path, decode={"spikes": {"bin_size_ms": 1e-6}})
    with pytest.raises(ValueError, match="as must be 'counts' or 'events'"):
        Dataset(path, decode={"spikes": {"as": "spikes"}})
    with pytest.raises(ValueError, match="bin_size_ms applies to counts"):
        Dataset(path, decode={"spikes": {"as": "events", "bin_size_ms": 20}})
    with pytest.raises(ValueError, match=r"takes no option\(s\) \['bins'\]"):
        Dataset(path, decode={"spikes": {"bins": 20}})
    # 0.4 ms divides the window but is 12 ticks at 30 kHz; 1/30 ms would not be a decimal: use a
    # 1 kHz session, where 0.5 ms is half a tick, refused when the sample is read.
    coarse = write(tmp_path / "coarse", draw(np.random.default_rng(3), 1, hz=1000, window=1000), hz=1000)
    with Dataset(coarse, decode={"spikes": {"bin_size_ms": 0.5}}) as ds:
        with pytest.raises(ShardError, match=r"bin size 0.5 ms is not a whole number of ticks at this sample's "
                                             r"resolution of 1000 ticks/s"):
            ds[0]


def test_values_and_writes_are_checked(tmp_path):
    with pytest.raises(ValueError, match="sorted"):
        SpikeEvents([0.2, 0.1], [0, 0], 1)
    with pytest.raises(ValueError, match=r"unit indices must lie in 0..1"):
        SpikeEvents([0.1, 0.2], [0, 2], 2)
    with pytest.raises(ValueError, match=">= 0"):
        SpikeEvents([-0.1], [0], 1)
    with pytest.raises(ValueError, match="tick_hz"):
        SpikeEvents([0.1], [0], 1, tick_hz=0)
    with pytest.raises(ValueError, match="differ in length"):
        ObservedIntervals([[0, 1]], [0, 1], 2)
    simultaneous = SpikeEvents([0.1, 0.1, 0.2], [3, 1, 0], 4)
    assert simultaneous.units.tolist() == [1, 3, 0]  # put in the order they decode in
    with pytest.raises(SampleError, match=r"at or after the window's end"):
        with WebDatasetWriter(tmp_path / "end", 4, codecs={"spikes": EVENTS}, fsync=False) as writer:
            writer.write_sample({"spikes": SpikeEvents([0.5, 1.0], [0, 0], 1, HZ)})
    with pytest.raises(SampleError, match=r"bin size 10 ms is not a whole number of ticks at this sample.s resolution of 7"):
        with WebDatasetWriter(tmp_path / "hz", 4, codecs={"spikes": EVENTS}, fsync=False) as writer:
            writer.write_sample({"spikes": SpikeEvents([0.5], [0], 1, 7)})


def test_configs_round_trip_and_encoding_is_deterministic(windows):
    for config in (EVENTS, {**EVENTS, "dtype": "<u2"}, OBSERVED, {**OBSERVED, "follows": None}):
        codec = registry_codec(config)
        assert type(codec).from_config(codec.get_config()) == codec
        assert codec.get_config()["id"] == config["id"] and codec.get_config().get("follows") == config.get("follows")
    codec = registry_codec(EVENTS)
    value = SpikeEvents.from_ticks(*windows[0], UNITS, HZ)
    assert codec.encode(value) == codec.encode(SpikeEvents(value.times.copy(), value.units.copy(), UNITS, HZ))
    assert codec.describe_value(value) == (np.dtype("<i4"), (BINS, UNITS)) and codec.describe_value(np.zeros(3)) is None
    for bad in ({**EVENTS, "dtype": "<f4"}, {**EVENTS, "bins": 0}, {**EVENTS, "bin_size_ms": -1}, {**EVENTS, "x": 1}):
        with pytest.raises(UnknownCodecError, match="codec 'spike-events' .* rejects its config"):
            registry_codec(bad)


def test_the_plugin_authors_check_passes(windows):
    """neurocodec.testing.check_codec, with what each value decodes to by default."""
    codec = registry_codec(EVENTS)
    values = [SpikeEvents.from_ticks(t, u, UNITS, HZ) for t, u in windows]
    counts = {id(v): binned(t, u, HZ // 100, BINS, UNITS).astype(np.int32) for v, (t, u) in zip(values, windows)}
    check_codec(codec, values, expect=lambda v: counts[id(v)])


def registry_codec(config):
    from neurocodec.plugin.manager import default_registry

    return default_registry().codec(dict(config), field="spikes")


def test_sessions_on_different_clocks_and_unit_counts_merge(tmp_path):
    rng = np.random.default_rng(4)
    a = draw(rng, 3, units=4, hz=30_000, window=30_000)
    b = draw(rng, 3, units=6, hz=20_000, window=20_000)
    write(tmp_path / "a", a, units=4, hz=30_000)
    write(tmp_path / "b", b, units=6, hz=20_000)
    merge_datasets([tmp_path / "a", tmp_path / "b"], tmp_path / "ab", 4, fsync=False)
    with Dataset(tmp_path / "ab", decode={"spikes": {"bin_size_ms": 50}}) as ds:
        assert ds.fields[0].shape == (20, None) and ds.fields[0].max_value_bytes == 20 * 6 * 4
        for i, ((ticks, unit), hz, units) in enumerate([(w, 30_000, 4) for w in a] + [(w, 20_000, 6) for w in b]):
            np.testing.assert_array_equal(ds[i]["spikes"], binned(ticks, unit, hz // 20, 20, units))
    loader = create_webdataset_dataloader(tmp_path / "ab", batch_size=6, shuffle=False, num_workers=0,
                                          decode={"spikes": {"bin_size_ms": 50}})
    batch = next(iter(loader))
    assert batch["spikes"].shape == (6, 20, 6) and batch["spikes_mask"][:3].sum() == 3 * 4


@pytest.mark.multiprocess
def test_dataloader_with_two_workers_bins_at_load_time(tmp_path, windows):
    path = write(tmp_path / "ds", windows * 2, compression="zstd")
    loader = create_webdataset_dataloader(path, batch_size=4, shuffle=False, num_workers=2,
                                          decode={"spikes": {"bin_size_ms": 20}})
    got = torch.cat([batch["spikes"] for batch in loader])
    want = [binned(t, u, HZ // 50, 50, UNITS) for t, u in windows * 2]
    assert got.dtype == torch.int32 and got.shape == (len(want), 50, UNITS)
    np.testing.assert_array_equal(np.sort(got.numpy().reshape(len(want), -1), 0),
                                  np.sort(np.stack(want).reshape(len(want), -1), 0))
    assert sorted(map(tuple, got.numpy().reshape(len(want), -1).tolist())) == \
        sorted(map(tuple, np.stack(want).reshape(len(want), -1).tolist()))
    events = create_webdataset_dataloader(path, batch_size=4, shuffle=False, num_workers=2,
                                          decode={"spikes": {"as": "events"}})
    seen = [e for batch in events for e in batch["spikes"]]
    assert all(isinstance(e, SpikeEvents) for e in seen) and len(seen) == len(want)
    assert sorted(len(e) for e in seen) == sorted(len(t) for t, _ in windows * 2)


# -- hostile payloads -----------------------------------------------------------------------------

def payload(ticks, counts, *, units=UNITS, hz=HZ, window=WINDOW, spikes=None, widths=(4, 1, 0), step=1,
            magic=b"NCSE", version=1, rest=b"") -> bytes:
    """An events payload as docs/format.md (section 7.7) lays it out, every field settable: `ticks`
    are the per-unit step deltas (written as uint32 byte planes), `counts` the spikes per unit."""
    tick_bytes, count_bytes, rest_bytes = widths
    head = HEADER.pack(magic, version, tick_bytes, count_bytes, rest_bytes, hz, window, units,
                       len(ticks) if spikes is None else spikes, step)
    planes = lambda values, width: np.asarray(values, f"<u{width}").view(np.uint8).reshape(-1, width).T.tobytes()
    return seal(head + planes(counts, count_bytes) + planes(ticks, tick_bytes) + rest)


def seal(body: bytes) -> bytes:
    """`body` and its CRC-32, the trailer every payload ends with."""
    return body + struct.pack("<I", zlib.crc32(body))


def observed_payload(rows, *, units=UNITS, window=WINDOW, count=None) -> bytes:
    rows = np.asarray(rows, "<u4").reshape(-1, 3)
    head = HEADER.pack(b"NCSO", 1, 4, 0, 0, HZ, window, units, len(rows) if count is None else count, 1)
    return seal(head + rows.T.tobytes())


HOSTILE = {
    "truncated": (seal(payload([5, 6, 7], [3, 0, 0, 0])[:-6]), r"payload holds \d+ bytes before its CRC-32; its header"),
    "header_only": (payload([], [0, 0, 0, 0])[:HEADER.size + 3], r"shorter than the 28-byte header and 4-byte CRC-32"),
    "damaged": (payload([5, 6, 7], [3, 0, 0, 0])[:-5] + b"\x07" + payload([5, 6, 7], [3, 0, 0, 0])[-4:],
                r"does not match its CRC-32"),
    "huge_spike_count": (payload([5], [1, 0, 0, 0], spikes=2**32 - 1), r"its header \(4 units, 4294967295 spikes\)"),
    "counts_too_large": (payload([5, 6], [2, 7, 0, 0]), r"spikes per unit add up to 9, the header says 2"),
    "units_not_the_manifests": (payload([5], [1, 0, 0, 0, 0], units=5), r"holds 5 units, the manifest declares 4"),
    "huge_unit_count": (payload([], [], units=2**32 - 1), r"4294967295 units"),
    "tick_beyond_window": (payload([WINDOW], [1, 0, 0, 0]), r"step 30000 of 1 ticks lies beyond the window"),
    "delta_wrapping_backwards": (payload([WINDOW - 5, 2**32 - 1], [2, 0, 0, 0]), r"lies beyond the window"),
    "remainder_not_below_step": (payload([0], [1, 0, 0, 0], widths=(4, 1, 1), step=100, rest=b"\x96"),
                                 r"a remainder 150 is not below the step of 100 ticks"),
    "remainder_past_window_end": (payload([297], [1, 0, 0, 0], widths=(4, 1, 1), step=101, rest=b"\x64"),
                                  r"tick 30097 lies beyond the window"),
    "step_larger_than_window": (payload([0], [1, 0, 0, 0], widths=(4, 1, 4), step=2**32 - 1, rest=bytes(4)),
                                r"step of 4294967295 ticks"),
    "bad_widths": (seal(payload([5], [1, 0, 0, 0])[:5] + b"\x03" + payload([5], [1, 0, 0, 0])[6:-4]),
                   r"declares widths 3/1/0"),
    "other_window": (payload([5], [1, 0, 0, 0], window=WINDOW * 2), r"spans 60000 ticks.*window of 1000 ms"),
    "zero_tick_rate": (payload([5], [1, 0, 0, 0], hz=0), r"0 ticks/s"),
    "bad_magic": (payload([5], [1, 0, 0, 0], magic=b"NCSO"), r"does not start with b'NCSE'"),
    "newer_version": (payload([5], [1, 0, 0, 0], version=2), r"version 2"),
}
HOSTILE_OBSERVED = {
    "unit_out_of_range": (observed_payload([[4], [0], [10]]), r"an interval has a unit outside 0..3"),
    "start_after_stop": (observed_payload([[0], [10], [10]]), r"bounds outside 0 <= start < stop"),
    "stop_beyond_window": (observed_payload([[0], [0], [WINDOW + 1]]), r"bounds outside"),
    "huge_interval_count": (observed_payload([[0], [0], [10]], count=2**32 - 1), r"4294967295 intervals"),
    "truncated": (seal(observed_payload([[0], [0], [10]])[:-5]), r"payload holds \d+ bytes before its CRC-32"),
    "damaged": (observed_payload([[0], [0], [10]])[:-6] + b"\x0b" + observed_payload([[0], [0], [10]])[-5:],
                r"does not match its CRC-32"),
}


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    root = tmp_path_factory.mktemp("valid")
    intervals = [ObservedIntervals.from_ticks([[0, 300]], [0], UNITS, HZ)] * 3
    return {c: write(root / c, draw(np.random.default_rng(5), 3), compression=c, observed=intervals)
            for c in ("none", "zstd")}


@pytest.mark.parametrize("compression", ["none", "zstd"])
@pytest.mark.parametrize("name", sorted(HOSTILE) + [f"observed:{n}" for n in sorted(HOSTILE_OBSERVED)])
def test_hostile_payloads_are_refused_through_dataset(tmp_path, valid, compression, name):
    field, (raw, match) = ("spikes_observed", HOSTILE_OBSERVED[name[9:]]) if name.startswith("observed:") \
        else ("spikes", HOSTILE[name])
    root = h.copy_dataset(valid[compression], tmp_path / "ds")
    h.replace_member(root, 0, 0, field, payload=h.compress(compression, raw), raw=len(raw))
    suffix = "" if compression == "none" else ".zst"
    exc = read_rejected(root, Expect(ShardError, match, member=f"sample_000000001.{field}.bin{suffix}"))
    assert re.search("spike-(events|observed)", str(exc))


@pytest.mark.parametrize("field,change,match", [
    ("spikes", {"dtype": "<i2"}, r"field 'spikes' must be an array of <i4, the manifest says array <i2"),
    ("spikes", {"shape": [50, 4]}, r"field 'spikes' must have shape \(100, units\), the manifest says \(50, 4\)"),
    ("spikes_observed", {"dtype": "|u1"}, r"field 'spikes_observed' must be an array of \|b1"),
    ("spikes", {"codec": {**EVENTS, "bin_size_ms": 7, "dtype": "<i4"}}, r"the field's window of 700 ms"),
])
def test_a_manifest_at_odds_with_its_codec_config_is_refused_when_read(tmp_path, valid, field, change, match):
    root = h.copy_dataset(valid["none"], tmp_path / "ds")
    doc = h.load_manifest(root)
    next(f for f in doc["fields"] if f["name"] == field).update(change)
    h.save_manifest(root, doc)
    read_rejected(root, Expect(ShardError, match, member=f"sample_000000001.{field}.bin"))
