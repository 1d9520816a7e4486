"""Property-based fuzzing of the neural codecs' decoders through `Dataset` (hypothesis).

Each neural codec's member of a valid dataset is replaced by a mutation of its payload (bit
flips, bytes overwritten with other bytes or with interesting little-endian integers at the
places headers keep their counts, truncation, bytes appended or cut out) and everything around
it is made consistent again (tar header, index, CRC-32, the manifest's checksums and size
limits), so the decoder itself meets the crafted bytes: opening the dataset with
`verify="none"` and reading the sample must give back an array of the field's dtype and shape
or raise neurocodec's `ShardError` naming the member — never another exception, a crash, a hang
or an allocation beyond what the manifest declares (pytest-timeout; the manifest's bounds stay
those of the valid dataset where they already admit the mutated member). Spike payloads carry a
CRC-32 of their own, so theirs must decode to exactly the original values or fail; for the other
codecs, as for `.npy`, catching changed bytes is the member CRC-32's job (`verify="crc"`).
"""

from __future__ import annotations

import shutil
import struct
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hostile as h
from neurocodec import Dataset, WebDatasetWriter
from neurocodec.errors import ShardError
from neurocodec.nwb.converter import NWBToWebDatasetConverter
from neurocodec.plugin import signal_codec

pytestmark = pytest.mark.timeout(300)

SESSION = Path(__file__).parent / "data" / "format-v1" / "session.nwb"
FUZZ = settings(max_examples=120, deadline=timedelta(seconds=10),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
INTERESTING = (0, 1, 2, 7, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1)


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, tuple[Path, list[str]]]:
    """Valid datasets holding every neural codec, with the fields worth fuzzing in each."""
    work = tmp_path_factory.mktemp("fuzz-codecs")
    session = work / "session.nwb"
    shutil.copyfile(SESSION, session)
    with NWBToWebDatasetConverter(work / "nwb", 4, ["spikes", "lfp"], bin_size_ms=20.0, sequence_length=25,
                                  overlap=0.0, progress=False, fsync=False) as converter:
        converter.convert_nwb_files([session])
        converter.finalize()
    rng = np.random.default_rng(5)
    codecs = {"lfp": signal_codec(np.dtype("<i2")), "video": {"id": "av-video", "codec": "ffv1"}}
    with WebDatasetWriter(work / "written", 4, codecs=codecs, fsync=False) as writer:
        for _ in range(3):
            writer.write_sample({"lfp": rng.integers(-300, 300, (40, 3)).astype("<i2"),
                                 "video": rng.integers(0, 255, (3, 12, 10)).astype(np.uint8)})
    neural = lambda root: [f.name for f in Dataset(root).manifest.fields if f.codec_id not in ("npy", "json")]
    bases = {name: (work / name, neural(work / name)) for name in ("nwb", "written")}
    assert sorted(bases["nwb"][1]) == ["lfp", "spikes", "spikes_observed"], bases["nwb"][1]
    return bases


@st.composite
def mutations(draw, length: int) -> list[tuple]:
    """A few edits of a payload of `length` bytes, aimed at its first 64 bytes half the time."""
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        near = draw(st.booleans())
        pos = draw(st.integers(0, max(0, min(length, 64) - 1) if near else max(0, length - 1)))
        kind = draw(st.sampled_from(["flip", "u32", "u16", "bytes", "truncate", "append", "cut"]))
        if kind == "flip":
            edits.append(("flip", pos, draw(st.integers(0, 7))))
        elif kind in ("u32", "u16"):
            edits.append((kind, pos, draw(st.sampled_from(INTERESTING))))
        elif kind == "bytes":
            edits.append(("bytes", pos, draw(st.binary(min_size=1, max_size=16))))
        elif kind == "truncate":
            edits.append(("truncate", pos, 0))
        elif kind == "append":
            edits.append(("append", 0, draw(st.binary(min_size=1, max_size=64))))
        else:
            edits.append(("cut", pos, draw(st.integers(1, 32))))
    return edits


def mutate(payload: bytes, edits: list[tuple]) -> bytes:
    """Apply `edits` in order (positions beyond the end are clamped)."""
    data = bytearray(payload)
    for kind, pos, arg in edits:
        pos = min(pos, max(0, len(data) - 1))
        if kind == "flip" and data:
            data[pos] ^= 1 << arg
        elif kind in ("u32", "u16"):
            packed = struct.pack("<I" if kind == "u32" else "<H", arg % (2**32 if kind == "u32" else 2**16))
            data[pos:pos + len(packed)] = packed
        elif kind == "bytes":
            data[pos:pos + len(arg)] = arg
        elif kind == "truncate":
            del data[pos:]
        elif kind == "append":
            data += arg
        elif kind == "cut":
            del data[pos:pos + arg]
    return bytes(data)


def check(base: Path, field: str, sample: int, edits: list[tuple]) -> None:
    """Mutate one member, then read it: the original value or a ShardError naming it."""
    with Dataset(base) as ds:
        want = ds[sample][field]
    with tempfile.TemporaryDirectory() as tmp:
        root = h.copy_dataset(base, Path(tmp) / base.name)
        payload = h.read_members(root, 0)[h.member_position(root, 0, sample, field)].payload
        h.replace_member(root, 0, sample, field, payload=mutate(payload, edits))
        try:
            with Dataset(root, verify="none") as ds:
                got = ds[sample][field]
        except ShardError as exc:
            assert f".{field}." in str(exc), exc
            return
    assert isinstance(got, np.ndarray) and got.dtype == want.dtype and got.shape == want.shape
    if field.startswith("spikes"):  # spike payloads carry their own CRC-32: never other values
        assert got.tobytes() == want.tobytes(), f"{field}: a mutated payload decoded to other values"


@FUZZ
@given(data=st.data())
def test_mutated_neural_payloads_decode_exactly_or_raise_shard_errors(bases, data):
    name = data.draw(st.sampled_from(sorted(bases)))
    base, fields = bases[name]
    field = data.draw(st.sampled_from(fields))
    sample = data.draw(st.integers(0, 2))
    length = len(h.read_members(base, 0)[h.member_position(base, 0, sample, field)].payload)
    check(base, field, sample, data.draw(mutations(length)))
