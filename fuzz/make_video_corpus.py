"""Write the seeds of the `video` target of fuzz/fuzz_parsers.py (needs PyAV).

    python fuzz/make_video_corpus.py [OUT_DIR]      # default: fuzz/corpus/video

`valid-*`: small windows encoded by the av-video codec (FFV1 gray and RGB, ffvhuff RGB, PNG RGBA, H.264 gray),
which the target must accept. `hostile-*`: the same payloads forged (truncated, a codec number
outside the allowlist, a frame count or frame size beyond the bound, an empty packet, a PNG
frame whose IHDR declares 8000x8000), which it must refuse with CodecError. `odd-*`: FFV1
packets of random bytes, which may decode to garbage frames of the declared shape or be refused.
Deterministic: FFV1, ffvhuff, PNG and x264 on one thread give the same bytes for the same frames.
"""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from neurocodec_plugins.video_codec import HEADER, LENGTH, VideoCodec  # noqa: E402

OUT = Path(__file__).resolve().parent / "corpus" / "video"


def frames(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A moving gradient with a little noise: compressible, not constant."""
    rng = np.random.default_rng(seed)
    t, y, x = np.meshgrid(*(np.arange(n) for n in shape[:3]), indexing="ij")
    base = (x * 7 + y * 5 + t * 3) % 256
    if len(shape) == 4:
        base = base[..., None] + np.arange(shape[3]) * 40
    return ((base + rng.integers(0, 3, base.shape)) % 256).astype(np.uint8)


def packets_of(payload: bytes) -> tuple[tuple, bytes, list[bytes]]:
    """Header fields, extradata and packets of a valid payload."""
    fields = HEADER.unpack_from(payload)
    pos = HEADER.size + fields[-1]
    packets = []
    for _ in range(fields[5]):
        (n,) = LENGTH.unpack_from(payload, pos)
        packets.append(payload[pos + 4:pos + 4 + n])
        pos += 4 + n
    return fields, payload[HEADER.size:HEADER.size + fields[-1]], packets


def reframe(fields: tuple, extradata: bytes, packets: list[bytes], **changes: int) -> bytes:
    """A payload with some header fields changed (by name) around the given packets."""
    names = ("magic", "version", "number", "channels", "flags", "frames", "height", "width", "extra")
    values = dict(zip(names, fields), extra=len(extradata))
    values.update(changes)
    return (HEADER.pack(*(values[n] for n in names)) + extradata
            + b"".join(LENGTH.pack(len(p)) + p for p in packets))


def png(width: int, height: int) -> bytes:
    """An RGBA PNG declaring `width` x `height` with almost no image data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(1000))) + chunk(b"IEND", b""))


def seeds() -> dict[str, bytes]:
    """Every seed, by file name."""
    valid = {
        "valid-ffv1-gray": VideoCodec("ffv1").encode(frames((3, 9, 7), 0)),
        "valid-ffv1-rgb": VideoCodec("ffv1").encode(frames((2, 8, 8, 3), 1)),
        "valid-png-rgba": VideoCodec("png").encode(frames((2, 5, 6, 4), 2)),
        "valid-ffvhuff-rgb": VideoCodec("ffvhuff").encode(frames((2, 7, 9, 3), 4)),
        "valid-h264-gray": VideoCodec("h264", crf=23, preset="ultrafast").encode(frames((4, 16, 16), 3)),
    }
    fields, extradata, packets = packets_of(valid["valid-ffv1-gray"])
    png_fields, _, png_packets = packets_of(valid["valid-png-rgba"])
    rng = np.random.default_rng(9)
    junk = [rng.integers(0, 256, 64, dtype=np.uint8).tobytes() for _ in range(3)]
    return {
        **valid,
        "hostile-truncated": valid["valid-ffv1-gray"][:-5],
        "hostile-codec-9": reframe(fields, extradata, packets, number=9),
        "hostile-huge-count": reframe(fields, extradata, packets, frames=2**32 - 1),
        "hostile-huge-frames": reframe(fields, extradata, packets, height=16000, width=16000),
        "hostile-empty-packet": reframe(fields, extradata, packets[:2] + [b""]),
        "hostile-extradata-past-end": reframe(fields, extradata, packets, extra=1 << 30),
        "hostile-png-ihdr-8000": reframe(png_fields, b"", png_packets[:1] + [png(8000, 8000)]),
        "odd-ffv1-garbage": reframe(fields, extradata, junk),
    }


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else OUT
    out.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (out / name).write_bytes(data)
    print(f"{len(seeds())} seeds in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
