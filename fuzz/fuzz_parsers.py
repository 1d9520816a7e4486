"""Coverage-guided fuzzing of neurocodec's parsers of untrusted bytes, with atheris (libFuzzer).

Targets, each fed raw bytes (a dataset file, or a part of one):

    manifest      neurocodec.format.manifest.Manifest.from_json   may raise DatasetError
    index         neurocodec.format.index.decode, then validate   decode may raise ValueError;
                                                                  validate returns, never raises
    tar           neurocodec.format.tar.parse_header              may raise HeaderError
    npy           neurocodec.npy.decode                           may raise NpyError
    ndarray       the ndarray codec's decoder (filter chains,     may raise CodecError
                  bodies in row blocks and their row ranges)
    scaled-int    the scaled-int codec's decoders                 may raise CodecError
    spike-events  the spike-events / spike-observed decoders      may raise CodecError
    video         the av-video codec's decoder (PyAV)             may raise CodecError

A finding is any other exception, a crash, or a broken invariant of what a parser accepts (a
manifest or NPY header accepted with a dtype the format does not store, an array whose bytes
are not its payload, a header with a name or size it cannot hold). See fuzz/README.md.

    python fuzz/fuzz_parsers.py TARGET [libFuzzer options] [CORPUS_DIR ...]   # needs atheris
    python fuzz/fuzz_parsers.py TARGET --replay DIR_OR_FILE ...               # no atheris

An index input starts with a 27-byte little-endian prefix giving the parameters the reader
would take from the manifest and the file system (`INDEX_PREFIX`: samples u16, members u8,
shard file size u64, largest decoded and stored member sizes u64), then the index file's bytes.
A tar input is one header block: the first 512 bytes, zero-padded.
"""

from __future__ import annotations

import importlib
import struct
import sys
from pathlib import Path
from typing import Callable

INDEX_PREFIX = struct.Struct("<HBQQQ")
BLOCK = 512
STORED_KINDS = {"b": 1, "i": 8, "u": 8, "f": 8, "c": 16}  # largest itemsize the format stores per kind


def _storable(dtype) -> bool:
    """The format's dtypes, judged independently of neurocodec: bool, integers, floats up to
    64 bits, complex up to 128, plain (no fields, no sub-array), not big-endian."""
    return (dtype.kind in STORED_KINDS and dtype.fields is None and dtype.subdtype is None
            and dtype.itemsize <= STORED_KINDS[dtype.kind] and dtype.byteorder != ">")


def target_manifest(data: bytes) -> bool:
    """Parse a manifest; what it accepts must re-serialise and parse back equal, with dtypes
    the format stores. Returns whether it was accepted."""
    import numpy as np

    from neurocodec.errors import DatasetError
    from neurocodec.format.manifest import Manifest

    try:
        manifest = Manifest.from_json(data)
    except DatasetError:
        return False
    for field in manifest.fields:
        if field.kind == "array":
            assert _storable(np.dtype(field.dtype)), f"manifest accepted dtype {field.dtype!r}"
    assert Manifest.from_json(manifest.to_json()) == manifest, "manifest does not round-trip"
    return True


def target_index(data: bytes) -> bool:
    """Decode an index with the prefix's parameters, then validate it: validate must return
    None or a reason, never raise. Returns whether it decoded and validated."""
    import numpy as np

    from neurocodec.format import index

    if len(data) < INDEX_PREFIX.size:
        return False
    samples, members, file_size, max_raw, max_stored = INDEX_PREFIX.unpack_from(data)
    try:
        rows = index.decode(data[INDEX_PREFIX.size:], samples, members)
    except ValueError:
        return False
    assert rows.shape == (samples, members, index.COLUMNS) and rows.dtype == np.dtype("<u8")
    problem = index.validate(rows, file_size, np.full(members, max_raw, dtype=np.uint64),
                             np.full(members, max_stored, dtype=np.uint64))
    assert problem is None or isinstance(str(problem), str)
    return problem is None


def target_tar(data: bytes) -> bool:
    """Parse one header block; what it accepts has a short ASCII name and a size in range.
    Returns whether it was accepted."""
    from neurocodec.format import tar

    block = (bytes(data[:BLOCK]) + bytes(BLOCK))[:BLOCK]
    try:
        header = tar.parse_header(block)
    except tar.HeaderError:
        return False
    assert 0 < len(header.name) < tar.MAX_NAME and header.name.isascii() and "\0" not in header.name
    assert 0 <= header.size < 8**12
    return True


def target_npy(data: bytes) -> bool:
    """Parse an NPY payload; what it accepts is an array of a stored dtype over exactly the
    payload's last bytes. Returns whether it was accepted."""
    from neurocodec import npy

    try:
        array = npy.decode(data)
    except npy.NpyError:
        return False
    assert _storable(array.dtype), f"npy accepted dtype {array.dtype.str!r}"
    raw = array.tobytes(order="A")
    assert array.nbytes == len(raw) and (not raw or bytes(data).endswith(raw))
    return True


TARGETS: dict[str, Callable[[bytes], bool]] = {
    "manifest": target_manifest, "index": target_index, "tar": target_tar, "npy": target_npy,
}
CORPUS = Path(__file__).resolve().parent / "corpus"


# -- ndarray (neurocodec.plugin.arrays): a filter-chain payload decoded against a field ---------
NDARRAY_PREFIX = struct.Struct("<BB")
"""An ndarray input starts with two bytes: which of `NDARRAY_CHAINS` decodes it, and which
dtype of `npy.DTYPES` the field declares (each modulo its length); the rest is the payload."""
NDARRAY_CHAINS = (
    [{"id": "delta", "dtype": "<i2"}, {"id": "shuffle", "elementsize": 2}, {"id": "zstd", "level": 3}],
    [{"id": "shuffle", "elementsize": 4}, {"id": "lz4"}],
    [{"id": "delta", "dtype": "|u1"}, {"id": "zlib", "level": 6}],
    [{"id": "delta", "dtype": "<u8"}, {"id": "shuffle", "elementsize": 8}],
    [],
)
NDARRAY_BOUND = 1 << 20


def target_ndarray(data: bytes) -> bool:
    """Decode an `ndarray` payload for a field of shape (None, None) bounded to 1 MiB: it may
    raise CodecError; what it accepts is a read-only array of the field's dtype within the bound,
    which encodes back to bytes that decode to it. Returns whether it was accepted."""
    from neurocodec import npy
    from neurocodec.format.manifest import FieldSpec
    from neurocodec.plugin.arrays import ArrayCodec
    from neurocodec.plugin.codecs import CodecError

    if len(data) < NDARRAY_PREFIX.size:
        return False
    chain, dtype = NDARRAY_PREFIX.unpack_from(data)
    for order, block_rows in (("F", None), ("C", None), ("F", NDARRAY_BLOCK), ("C", NDARRAY_BLOCK)):
        codec = ArrayCodec(NDARRAY_CHAINS[chain % len(NDARRAY_CHAINS)], order, block_rows)
        field = FieldSpec("x", "array", "array", codec.get_config(), "nda", "fuzz", "0",
                          dtype=npy.DTYPES[dtype % len(npy.DTYPES)], shape=(None, None), max_raw_bytes=NDARRAY_BOUND)
        try:
            array = codec.decoder(field)(data[NDARRAY_PREFIX.size:])
        except CodecError:
            continue
        assert _storable(array.dtype) and array.dtype.str == field.dtype and array.ndim == 2
        assert array.nbytes <= NDARRAY_BOUND and not array.flags.writeable
        again = codec.decoder(field)(codec.encode(array))
        assert again.tobytes() == array.tobytes(), "ndarray does not round-trip"
        if block_rows is not None:
            _check_row_ranges(codec, field, data[NDARRAY_PREFIX.size:], array)
        return True
    return False


NDARRAY_BLOCK = 4
"""Rows per block of the blocked configs the ndarray target also tries."""


def _check_row_ranges(codec, field, payload: bytes, array) -> None:
    """Any row range of an accepted blocked payload decodes to those rows of the whole."""
    body = codec._body_parser(field)(payload)
    rows = array.shape[0]
    for first, stop in ((0, rows), (rows // 2, rows), (max(0, rows - 5), max(0, rows - 1)), (1, min(rows, 6))):
        if first <= stop:
            assert body.rows(first, stop).tobytes() == array[first:stop].tobytes(), "row range differs"


TARGETS["ndarray"] = target_ndarray


def replay(target: str, paths: list[Path]) -> int:
    """Feed every file under `paths` to `target` (no atheris); print and count the findings."""
    files = [f for p in paths for f in (sorted(p.rglob("*")) if p.is_dir() else [p]) if f.is_file()]
    findings = 0
    for f in files:
        try:
            TARGETS[target](f.read_bytes())
        except Exception as exc:  # every exception that escapes a target is a finding
            findings += 1
            print(f"FINDING {target} {f}: {type(exc).__name__}: {exc}", file=sys.stderr)
    print(f"{target}: {len(files)} inputs replayed, {findings} findings")
    return findings


JSON_VALUES = (0, 1, -1, 2, 2**31, 2**32 + 7, 2**63 - 1, 2**63, 2**63 + 5, 2**64 - 1, 2**64, 10**30, 0.5,
               None, True, False, "", "x" * 40, [], {}, [None], [2, None], [-1, 8], [2**63, 2**63],
               "|O", "O", "S8", "U4", "V8", "M8[ns]", "m8", ">f4", "<f16", "c32", "T", "<f4,<i4", "(2,)f4",
               "<f4", "<i8", "|u1", "npy", "json", "zstd", "array", "../x", "shard_000001.tar")


def _slots(node, out: list) -> list:
    """(container, key) of every value in a JSON document."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        out.append((node, key))
        _slots(value, out)
    return out


def mutate_manifest(data: bytes, max_size: int, seed: int) -> bytes:
    """atheris custom mutator for `manifest`: mostly structure-aware (a value replaced by a
    boundary integer, a dtype string or another JSON value; an integer nudged; a key deleted),
    so that inputs stay JSON and reach the checks; sometimes libFuzzer's byte mutations."""
    import json
    import random

    import atheris

    rng = random.Random(seed)
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        doc = None
    slots = _slots(doc, []) if isinstance(doc, (dict, list)) else []
    if not slots or rng.random() < 0.2:
        return atheris.Mutate(data, max_size)
    for _ in range(rng.randint(1, 3)):
        node, key = rng.choice(slots)
        if isinstance(node, dict) and rng.random() < 0.1:
            node.pop(key, None)
            break
        value = node[key]
        if type(value) is int and rng.random() < 0.3:
            node[key] = value + rng.choice((-1, 1, -512, 512, 2**32))
        else:
            node[key] = rng.choice(JSON_VALUES)
    out = json.dumps(doc).encode()
    return out if len(out) <= max_size else atheris.Mutate(data, max_size)


def fuzz(target: str, libfuzzer_args: list[str]) -> None:
    """Run atheris on `target` (argument handling and corpus directories are libFuzzer's)."""
    import atheris

    with atheris.instrument_imports(include=["neurocodec", "neurocodec_plugins"]):  # imported here: instrumented
        for module in ("neurocodec.errors", "neurocodec.format.index", "neurocodec.format.manifest",
                       "neurocodec.format.tar", "neurocodec.npy", "neurocodec.plugin.arrays",
                       "neurocodec.plugin.filters", "neurocodec.plugin.scaled", "neurocodec.plugin.events",
                       "neurocodec.plugin.event_codecs", "neurocodec_plugins.video_codec"):
            importlib.import_module(module)
    mutator = mutate_manifest if target == "manifest" else None
    atheris.Setup([sys.argv[0], *libfuzzer_args], TARGETS[target], custom_mutator=mutator)
    atheris.Fuzz()


def main(argv: list[str]) -> int:
    """`TARGET [--replay PATH ...] | TARGET [libFuzzer args]`; `all --replay` replays every
    target over its own corpus directory."""
    if len(argv) < 1 or argv[0] not in (*TARGETS, "all"):
        print(__doc__, file=sys.stderr)
        print(f"usage: fuzz_parsers.py {{{','.join(TARGETS)}}} [--replay PATH ...]", file=sys.stderr)
        return 2
    target, rest = argv[0], argv[1:]
    if rest[:1] == ["--replay"]:
        if target == "all":
            return int(sum(replay(t, [CORPUS / t]) for t in TARGETS) > 0)
        return int(replay(target, [Path(p) for p in rest[1:]] or [CORPUS / target]) > 0)
    if target == "all":
        print("fuzz one target at a time; `all` is for --replay", file=sys.stderr)
        return 2
    fuzz(target, rest)
    return 0


# -- av-video (plugins/video_codec.py, issue 14; needs PyAV) ------------------------------------

VIDEO_BOUND = 1 << 20


def target_video(data: bytes) -> bool:
    """Decode an `av-video` payload as a field of uint8 frames whose axes are all free, declaring a
    1 MiB value bound; the manifest's codec is the payload's own when allowed (ffv1 otherwise),
    so every allowed decoder is reached. Documented error: CodecError. What it accepts is uint8
    frames with the header's frame count and channel axis, within the bound."""
    import numpy as np

    from neurocodec.plugin import CodecError, FieldSpec
    from neurocodec_plugins.video_codec import BY_NUMBER, HEADER, VideoCodec

    codec = BY_NUMBER.get(data[5], "ffv1") if len(data) > 5 else "ffv1"
    ndim = 4 if len(data) > 6 and data[6] else 3
    field = FieldSpec(name="video", modality="video", kind="array", codec={"id": "av-video", "codec": codec},
                      extension="ncv", plugin="video", plugin_version="", dtype="|u1", shape=(None,) * ndim,
                      max_value_bytes=VIDEO_BOUND)
    try:
        frames = VideoCodec(codec).decode(data, field)
    except CodecError:
        return False
    assert frames.dtype == np.uint8 and frames.ndim == ndim and frames.nbytes <= VIDEO_BOUND
    assert frames.shape[0] == HEADER.unpack_from(data)[5], "frame count differs from the header's"
    return True


TARGETS["video"] = target_video


# -- spike-events / spike-observed (neurocodec/plugin/event_codecs.py, issue 14) -----------------

SPIKE_MODES = ({}, {"bin_size_ms": 20}, {"bin_size_ms": 1}, {"as": "events"}, "observed")
"""A spike-events input starts with one byte choosing how it is decoded (modulo 5): counts at the
stored 10 ms, at 20 ms, at 1 ms, as events, or as a spike-observed mask; and (its value // 5, odd)
whether the payload's CRC-32 trailer is recomputed first, so that mutations reach the checks
behind it. The rest is the payload."""
SPIKE_BOUND = 1 << 20


def target_spike_events(data: bytes) -> bool:
    """Decode a payload for a (100 bins of 10 ms, any units) field bounded to 1 MiB. Documented
    error: CodecError. What it accepts: counts of the field's dtype and (bins, units) shape that
    add up to the spikes of the same payload decoded as events; events sorted in time within the
    window, with unit indices below the unit count, that encode back to the same events; a mask
    of booleans of the asked shape."""
    import numpy as np

    from neurocodec.plugin import CodecError, FieldSpec, SpikeEvents, SpikeEventsCodec, SpikeObservedCodec

    if not data:
        return False
    mode, payload = SPIKE_MODES[data[0] % len(SPIKE_MODES)], data[1:]
    if data[0] // len(SPIKE_MODES) % 2 and len(payload) >= 4:
        import zlib

        payload = payload[:-4] + struct.pack("<I", zlib.crc32(payload[:-4]))
    observed = mode == "observed"
    codec = SpikeObservedCodec(100, 10, "spikes") if observed else SpikeEventsCodec(100, 10)
    field = FieldSpec("spikes", "spikes", "array", codec.get_config(), "bin", "fuzz", "0",
                      dtype="|b1" if observed else "<i4", shape=(100, None), max_value_bytes=SPIKE_BOUND)
    try:
        value = codec.decoder(field, {} if observed else mode)(payload)
        events = None if observed else codec.decoder(field, {"as": "events"})(payload)
    except CodecError:
        return False
    if observed:
        assert value.dtype == np.bool_ and value.shape[0] == 100
        return True
    assert isinstance(events, SpikeEvents) and np.all(np.diff(events.times) >= 0)
    assert len(events) == 0 or (events.times[0] >= 0 and events.times[-1] < 1.0 and events.units.max() < events.unit_count)
    if isinstance(value, SpikeEvents):
        assert value == events and codec.decoder(field, {"as": "events"})(codec.encode(value)) == value
    else:
        assert value.dtype == np.int32 and value.shape[1] == events.unit_count and value.sum() == len(events)
        assert value.nbytes <= SPIKE_BOUND * (100 if mode.get("bin_size_ms") == 1 else 1)
    return True


TARGETS["spike-events"] = target_spike_events


# -- scaled-int (neurocodec/plugin/scaled.py, issue 14) -----------------------------------------

SCALED_PREFIX = struct.Struct("<BB")
"""A scaled-int input starts with two bytes: the config (signal preset or no filters, C or F order,
in one piece or in blocks of NDARRAY_BLOCK rows; modulo 8) and the raw dtype (an index in SCALED_DTYPES); the rest is the payload."""
SCALED_DTYPES = ("|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8")
SCALED_BOUND = 1 << 20


def target_scaled(data: bytes) -> bool:
    """Decode a `scaled-int` payload for a field of shape (None, None) whose float32 values are
    bounded to 1 MiB, with the delta/shuffle/zstd preset or no filters, to float32 and with
    raw=True: CodecError, or arrays of the field's dtypes within the bounds, the float32 values
    exactly the raw integers scaled. Returns whether it was accepted."""
    import numpy as np

    from neurocodec.format.manifest import FieldSpec
    from neurocodec.plugin.codecs import CodecError
    from neurocodec.plugin.scaled import ScaledIntCodec, _parse_header, scaled_codec
    from neurocodec.nwb.series import ScaledSignal

    if len(data) < SCALED_PREFIX.size:
        return False
    which, dtype = SCALED_PREFIX.unpack_from(data)
    raw_dtype = SCALED_DTYPES[dtype % len(SCALED_DTYPES)]
    config = scaled_codec(raw_dtype, order="CF"[which % 2]) if which % 4 < 2 else \
        {"id": "scaled-int", "raw_dtype": raw_dtype, "filters": [], "order": "CF"[which % 2]}
    if which % 8 >= 4:
        config["block_rows"] = NDARRAY_BLOCK
    codec = ScaledIntCodec.from_config(config)
    field = FieldSpec("x", "lfp", "array", codec.get_config(), "sci", "fuzz", "0", dtype="<f4",
                      shape=(None, None), max_raw_bytes=SCALED_BOUND)
    payload = data[SCALED_PREFIX.size:]
    try:
        values = codec.decoder(field)(payload)
    except CodecError:
        try:
            codec.decoder(field, {"raw": True})(payload)
        except CodecError:
            return False
        raise AssertionError("raw decode accepts what the float decode refuses")
    raw = codec.decoder(field, {"raw": True})(payload)
    assert values.dtype == np.float32 and values.nbytes <= SCALED_BOUND and values.ndim == 2
    assert raw.dtype.str == raw_dtype and raw.shape == values.shape
    shape, factors, conversion, offset, _ = _parse_header(memoryview(payload), codec.raw_dtype, field, 1 << 18)
    again = ScaledSignal(raw, conversion, offset, factors)
    assert again.physical().tobytes() == values.tobytes()
    assert codec.decoder(field)(codec.encode(again)).tobytes() == values.tobytes(), "does not round-trip"
    return True


TARGETS["scaled-int"] = target_scaled


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
