"""Hostile `av-video` payloads (plugins/video_codec.py) are refused through `Dataset`, in bounded
memory, without crashing the process.

Each case damages one member of a valid dataset written by `WebDatasetWriter` and makes
everything around it consistent (index, CRC, SHA-256, field size limits: tests/hostile.py), so
the damage reaches the video codec. The payloads are built here from the framing as
docs/format.md (section 7.8) specifies it (24-byte little-endian header, extradata, length-prefixed
packets), independently of the codec's code. Every read runs in a child process whose address
space is capped at 512 MiB above its size, so a native crash fails one test (not pytest) and an
allocation beyond the cap shows; the child also reports how much its peak address space grew
while reading, which must stay small (a forged 8000x8000 PNG frame would take 244 MiB).
"""

from __future__ import annotations

import fractions
import json
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Callable

import av
import numpy as np
import pytest

import hostile as h
from neurocodec import WebDatasetWriter

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")]

HEADER = struct.Struct("<4sBBBBIIII")
NUMBER = {"ffv1": 1, "png": 2, "h264": 3, "ffvhuff": 4}
MEMBER = "sample_000000001.video.ncv"
MAX_GROWTH = 64 << 20

CHILD = r"""
import json, resource, sys
from neurocodec import Dataset
from neurocodec.plugin.manager import default_registry

def vm(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024

default_registry()
import av  # loaded before the cap and the measurement: only reading counts
limit = vm("VmSize:") + (512 << 20)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
out = {"error": None}
try:
    with Dataset(sys.argv[1]) as ds:
        before = vm("VmPeak:")
        value = ds[int(sys.argv[2])]["video"]
        out["shape"] = list(value.shape)
except BaseException as exc:
    out.update(error=type(exc).__name__, message=str(exc), shard=getattr(exc, "shard", None),
               member=getattr(exc, "member", None))
    before = locals().get("before", vm("VmPeak:"))
out["growth"] = vm("VmPeak:") - before
print(json.dumps(out))
"""


# -- the framing, written independently of the codec ----------------------------------------------

def frame(codec: str, channels: int, frames: int, height: int, width: int, packets: list[bytes],
          extradata: bytes = b"", *, magic: bytes = b"NCVF", version: int = 1, flags: int = 0,
          number: int | None = None, extra_length: int | None = None) -> bytes:
    """A payload as docs/format.md (section 7.8) lays it out, every field settable."""
    head = HEADER.pack(magic, version, NUMBER[codec] if number is None else number, channels, flags, frames,
                       height, width, len(extradata) if extra_length is None else extra_length)
    return head + extradata + b"".join(struct.pack("<I", len(p)) + p for p in packets)


def unframe(payload: bytes) -> dict:
    """The fields and packets of a valid payload."""
    magic, version, number, channels, flags, frames, height, width, extra = HEADER.unpack_from(payload)
    pos, packets = HEADER.size + extra, []
    for _ in range(frames):
        (length,) = struct.unpack_from("<I", payload, pos)
        packets.append(payload[pos + 4:pos + 4 + length])
        pos += 4 + length
    return {"channels": channels, "frames": frames, "height": height, "width": width,
            "extradata": payload[HEADER.size:HEADER.size + extra], "packets": packets}


def png(width: int, height: int, color: int = 6, rows: bytes = b"") -> bytes:
    """A PNG file with the given IHDR (8-bit, colour type `color`) and `rows` as its image data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def ffv1_rgb_packets(frames: np.ndarray) -> tuple[bytes, list[bytes]]:
    """Extradata and packets of RGB frames encoded by FFV1 (bgr0), straight through PyAV."""
    ctx = av.CodecContext.create("ffv1", "w")
    ctx.width, ctx.height, ctx.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
    ctx.time_base = fractions.Fraction(1, 30)
    ctx.open()
    packets = []
    for i, image in enumerate(frames):
        f = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[..., ::-1]), format="bgr24").reformat(format="bgr0")
        f.pts = i
        packets += [bytes(p) for p in ctx.encode(f)]
    return bytes(ctx.extradata or b""), packets + [bytes(p) for p in ctx.encode(None)]


def last_png(p: dict, packet: bytes) -> bytes:
    """The PNG base's 8x8 RGBA payload of sample 0 with its last (third) frame replaced by `packet`."""
    return frame("png", 4, 3, 8, 8, p["packets"][:2] + [packet])


def split_parameter_sets(packet: bytes) -> list[bytes]:
    """An H.264 key-frame packet as two: its parameter sets (no picture), then its IDR slice."""
    start = next(i for i in range(len(packet) - 4)
                 if packet[i:i + 3] == b"\0\0\1" and packet[i + 3] & 0x1F == 5)
    start -= packet[start - 1] == 0  # a 4-byte start code
    return [packet[:start], packet[start:]]


# -- the valid datasets and the cases ---------------------------------------------------------------

BASES = {  # codec config, channels, frame shapes of the two samples
    "ffv1": ({"codec": "ffv1"}, None, [(3, 8, 8), (2, 8, 8)]),
    "png": ({"codec": "png"}, 4, [(3, 8, 8), (2, 8, 8)]),
    "ffvhuff": ({"codec": "ffvhuff"}, 3, [(3, 8, 8), (2, 8, 8)]),
    "ffv1_zeros": ({"codec": "ffv1"}, None, [(3, 32, 32), (2, 32, 32)]),  # payloads smaller than values
    "h264": ({"codec": "h264", "crf": 20}, None, [(6, 16, 16), (4, 16, 16)]),
}


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    rng = np.random.default_rng(5)
    out = {}
    for name, (config, channels, shapes) in BASES.items():
        out[name] = tmp_path_factory.mktemp("video-base") / name
        with WebDatasetWriter(out[name], shard_size=4, fsync=False,
                              codecs={"video": {"id": "av-video", **config}}) as w:
            for shape in shapes:
                value = rng.integers(0, 256, shape + ((channels,) if channels else ()), dtype=np.uint8)
                value = np.zeros_like(value) if name.endswith("zeros") else value
                w.write_sample({"video": value})
    return out


CASES: dict[str, tuple[str, Callable[[dict, bytes], bytes], str]] = {
    # The framing (checked before any decoder runs).
    "truncated_packet": ("ffv1", lambda p, raw: raw[:-3], r"packet 2 \(length \d+\) is empty or runs past"),
    "truncated_header": ("ffv1", lambda p, raw: raw[:20], r"shorter than its 24-byte header"),
    "bad_magic": ("ffv1", lambda p, raw: b"XCVF" + raw[4:], r"not a version-1 video payload"),
    "flags_set": ("ffv1", lambda p, raw: frame("ffv1", 0, 3, 8, 8, p["packets"], p["extradata"], flags=1),
                  r"flags 1"),
    "empty_packet": ("ffv1", lambda p, raw: frame("ffv1", 0, 3, 8, 8, p["packets"][:2] + [b""], p["extradata"]),
                     r"packet 2 \(length 0\) is empty"),
    "bytes_after_packets": ("ffv1", lambda p, raw: raw + b"\0", r"1 bytes after its 3 packets"),
    "extradata_past_end": ("ffv1", lambda p, raw: frame("ffv1", 0, 3, 8, 8, p["packets"], p["extradata"],
                                                        extra_length=1 << 30), r"extradata of 1073741824 bytes"),
    "huge_frame_count": ("ffv1", lambda p, raw: frame("ffv1", 0, 2**32 - 1, 8, 8, p["packets"], p["extradata"]),
                         r"declares 274877906880 bytes of frames .* above the field's declared bound of \d+ bytes"),
    "frames_beyond_max_value_bytes": ("ffv1_zeros", lambda p, raw: frame(
        "ffv1", 0, 4, 32, 32, p["packets"] + p["packets"][:1], p["extradata"]),
        r"declares 4096 bytes of frames \(4, 32, 32\), above the field's declared bound of 3072 bytes"),
    "more_frames_than_packets": ("ffv1", lambda p, raw: frame("ffv1", 0, 3, 8, 8, p["packets"][:2], p["extradata"]),
                                 r"declares 3 packets, more than|packet 2 .* runs past"),
    "huge_frames": ("ffv1", lambda p, raw: frame("ffv1", 0, 1, 60000, 60000, p["packets"][:1], p["extradata"]),
                    r"60000x60000 frames of 0 channels \(1 to 16384 pixels a side"),
    "frame_size_not_the_fields": ("ffv1", lambda p, raw: frame("ffv1", 0, 3, 9, 8, p["packets"], p["extradata"]),
                                  r"declares shape \(3, 9, 8\), the manifest declares \(None, 8, 8\)"),
    "channels_not_the_fields": ("ffv1", lambda p, raw: frame("ffv1", 3, 3, 8, 8, p["packets"], p["extradata"]),
                                r"declares shape \(3, 8, 8, 3\), the manifest declares \(None, 8, 8\)"),
    # The decoder: only the allowlist, and only the manifest's.
    "codec_not_allowed": ("ffv1", lambda p, raw: frame("ffv1", 0, 3, 8, 8, p["packets"], p["extradata"], number=9),
                          r"codec number 9, not one of the allowed \[1, 2, 3, 4\]"),
    "codec_not_the_manifests": ("ffv1", lambda p, raw: frame("png", 0, 3, 8, 8, p["packets"], p["extradata"]),
                                r"video payload is png, the manifest says ffv1"),
    # What the decoder returns.
    "garbage_png_packet": ("png", lambda p, raw: frame("png", 4, 3, 8, 8, p["packets"][:2] + [bytes(range(200))]),
                           r"png could not decode the video payload"),
    "garbage_ffvhuff_extradata": ("ffvhuff", lambda p, raw: frame("ffvhuff", 3, 3, 8, 8, p["packets"],
                                                                   bytes(range(40))), r"ffvhuff could not decode"),
    "png_frame_smaller": ("png", lambda p, raw: last_png(p, png(4, 4, rows=bytes(68))),
                          r"decoded frame 2 is 4x4, the payload declares 8x8"),
    "png_frame_huge": ("png", lambda p, raw: last_png(p, png(8000, 8000, rows=bytes(10**5))),
                       r"png could not decode the video payload: Invalid argument"),
    "png_frame_gray_for_rgba": ("png", lambda p, raw: last_png(p, png(8, 8, 0, bytes(72))),
                                r"decoded frame 2 has pixel format gray, not one png gives for 4 channels"),
    "ffv1_rgb_for_gray": ("ffv1", lambda p, raw: frame("ffv1", 0, 3, 8, 8, *reversed(ffv1_rgb_packets(
        np.zeros((3, 8, 8, 3), np.uint8)))), r"decoded frame 0 has pixel format bgr0, not one ffv1 gives for 1"),
    "h264_packet_without_picture": ("h264", lambda p, raw: frame(
        "h264", 0, 6, 16, 16, split_parameter_sets(p["packets"][0]) + p["packets"][1:5]),
        r"h264 could not decode the video payload|h264 decoded 5 frames, the payload declares 6"),
}


def read_in_child(path: Path, sample: int = 0) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), str(sample)], capture_output=True, text=True,
                          timeout=100)
    assert proc.returncode == 0, f"the reading process died ({proc.returncode}): {proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


def damaged(bases: dict[str, Path], base: str, where: Path, build: Callable[[dict, bytes], bytes]) -> Path:
    root = h.copy_dataset(bases[base], where)
    raw = h.read_members(root, 0)[h.member_position(root, 0, 0, "video")].payload
    h.replace_member(root, 0, 0, "video", payload=build(unframe(raw), raw))
    return root


@pytest.mark.parametrize("name", CASES)
def test_hostile_payload_is_refused_naming_the_member(bases, tmp_path, name):
    base, build, match = CASES[name]
    got = read_in_child(damaged(bases, base, tmp_path / "ds", build))
    assert got["error"] == "ShardError", got
    assert re.search(match, got["message"]), got
    assert got["shard"] == "shard_000000.tar" and got["member"] == MEMBER, got
    assert got["growth"] < MAX_GROWTH, got


@pytest.mark.parametrize("base", BASES)
def test_valid_bases_read_in_the_child(bases, base):
    """The control: the same child reads the undamaged datasets."""
    got = read_in_child(bases[base], 1)
    assert got["error"] is None and got["growth"] < MAX_GROWTH, got


@pytest.mark.parametrize("base", ["ffv1", "ffvhuff", "h264"])
def test_garbage_packets_never_crash(bases, tmp_path, base):
    """FFV1 (at its default level), ffvhuff and H.264 have no checksum of their own, so garbage may
    decode to garbage frames: they must still be frames of the declared shape, or a ShardError,
    never a crash."""
    rng = np.random.default_rng(0)
    _, channels, shapes = BASES[base]
    height, width = shapes[0][1:]
    for n in range(4):
        junk = [rng.integers(0, 256, int(rng.integers(1, 300)), dtype=np.uint8).tobytes() for _ in range(3)]
        got = read_in_child(damaged(bases, base, tmp_path / f"ds{n}", lambda p, raw: frame(
            base, channels or 0, 3, height, width, junk, p["extradata"])))
        shape = [3, height, width] + ([channels] if channels else [])
        assert got["error"] == "ShardError" or got["shape"] == shape, got
        assert got["growth"] < MAX_GROWTH, got


@pytest.mark.parametrize("config,match", [
    ({"id": "av-video", "codec": "mpeg4"}, r"'mpeg4' is not one of ffv1, png, h264, ffvhuff"),
    ({"id": "av-video", "codec": "ffv1", "decoder": "mpeg4"}, r"does not take config"),
])
def test_manifest_naming_a_decoder_outside_the_allowlist_is_refused(bases, tmp_path, config, match):
    root = h.copy_dataset(bases["ffv1"], tmp_path / "ds")
    doc = h.load_manifest(root)
    doc["fields"][0]["codec"] = config
    h.save_manifest(root, doc)
    got = read_in_child(root)
    assert got["error"] == "UnknownCodecError" and re.search(match, got["message"]), got
