"""Video frames through a real codec, with PyAV: FFV1, FFV Huffyuv or PNG (lossless), H.264 (lossy, on request).

The codec `av-video` stores one window of uint8 frames, shape (time, height, width) or (time,
height, width, channels), as the compressed packets of one of an allowlist of codecs, in a small
framing of its own rather than a container (less to parse): a 24-byte little-endian header
(magic, version, codec number, channels, frame count, height, width, extradata length), the
codec's extradata, then one length-prefixed packet per frame. docs/format.md (section 7.8) specifies it
byte for byte.

Reading is bounded before any decoder runs: the header must match the field (uint8, its fixed
axes) and declare at most `field.max_value_bytes or field.max_raw_bytes` bytes of frames, the
packets must fill the payload exactly, the decoder is picked from the allowlist by the header's
codec number (which must be the manifest's codec), runs on one thread with FFmpeg's `max_pixels`
set to one frame, and every frame it returns must have the header's size and an expected pixel
format. Any failure is a CodecError. PyAV is optional: `pip install neurocodec[video]`.
"""

from __future__ import annotations

import importlib
import struct
from fractions import Fraction
from types import ModuleType
from typing import Any, Callable, ClassVar, Mapping

import attrs
import numpy as np

from neurocodec.plugin import Codec, CodecError, FieldSpec

MAGIC = b"NCVF"
VERSION = 1
HEADER = struct.Struct("<4sBBBBIIII")
"""magic, version, codec number, channels (0: no channel axis), flags (0), frames, height, width,
extradata length."""
LENGTH = struct.Struct("<I")
MAX_SIDE = 16384
"""The largest height or width (FFmpeg's image size checks allow no more for most codecs)."""
PADDING = 64
"""FFmpeg's AV_INPUT_BUFFER_PADDING_SIZE: zero bytes its decoders may read past their input."""
INSTALL = "PyAV is not installed; video codecs need it: pip install neurocodec[video]"
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


@attrs.frozen
class Profile:
    """One allowed codec: its number in the header, FFmpeg encoder and decoder, whether every
    frame is coded on its own, the pixel format frames are encoded in per channel count, and the
    formats its decoder may return."""

    number: int
    encoder: str
    decoder: str
    intra_only: bool
    pixel_formats: Mapping[int, str]
    decoded_formats: Mapping[int, tuple[str, ...]]
    options: Mapping[str, str] = {}


PROFILES: dict[str, Profile] = {
    "ffv1": Profile(1, "ffv1", "ffv1", True, {1: "gray", 2: "ya8", 3: "bgr0", 4: "bgra"},
                    {1: ("gray",), 2: ("ya8",), 3: ("bgr0",), 4: ("bgra",)}),
    "png": Profile(2, "png", "png", True, {1: "gray", 2: "ya8", 3: "rgb24", 4: "rgba"},
                   {1: ("gray",), 2: ("ya8",), 3: ("rgb24",), 4: ("rgba",)}),
    # H.264 4:0:0 (gray) comes back as yuv420p with neutral chroma: the luma plane is the frame.
    "h264": Profile(3, "libx264", "h264", False, {1: "gray", 3: "yuv444p"},
                    {1: ("gray", "yuv420p", "yuvj420p"), 3: ("yuv444p", "yuvj444p")}),
    "ffvhuff": Profile(4, "ffvhuff", "ffvhuff", True, {1: "gray", 3: "gbrp", 4: "gbrap"},
                       {1: ("gray",), 3: ("gbrp",), 4: ("gbrap",)}, {"pred": "median"}),
}
BY_NUMBER = {p.number: name for name, p in PROFILES.items()}
LAYOUTS: dict[str, tuple[tuple[int | None, ...], ...]] = {
    "gray": ((0,),), "ya8": ((0, 1),), "rgb24": ((0, 1, 2),), "rgba": ((0, 1, 2, 3),),
    "bgr0": ((2, 1, 0, None),), "bgra": ((2, 1, 0, 3),), "gbrp": ((1,), (2,), (0,)), "gbrap": ((1,), (2,), (0,), (3,)),
    "yuv420p": ((0,),), "yuvj420p": ((0,),),
}
"""Where the value's channels (R, G, B, A order; gray is channel 0) lie in a frame of each pixel
format: for each plane read or written, the channel of each byte of a pixel (None: padding)."""


def import_av() -> ModuleType:
    """PyAV, or a CodecError saying how to install it."""
    try:
        return importlib.import_module("av")
    except ImportError:
        raise CodecError(INSTALL) from None


@attrs.frozen
class Header:
    """The parsed, checked framing of one payload: what it declares and where its packets are."""

    codec: str
    channels: int  # 0: the value has no channel axis
    frames: int
    height: int
    width: int
    extradata: bytes
    packets: tuple[tuple[int, int], ...]  # (offset, length) of each packet in the payload

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the decoded value."""
        base = (self.frames, self.height, self.width)
        return base + (self.channels,) if self.channels else base


def pack(codec: str, shape: tuple[int, ...], extradata: bytes, packets: list[bytes]) -> bytes:
    """The payload: header, extradata, length-prefixed packets."""
    channels = shape[3] if len(shape) == 4 else 0
    head = HEADER.pack(MAGIC, VERSION, PROFILES[codec].number, channels, 0, shape[0], shape[1], shape[2],
                       len(extradata))
    parts = [head, extradata]
    for packet in packets:
        parts += [LENGTH.pack(len(packet)), packet]
    return b"".join(parts)


def parse_header(data: bytes | memoryview, field: FieldSpec, codec: str) -> Header:
    """Read and check the framing against the field and the manifest's `codec`, allocating
    nothing in proportion to what it declares. CodecError for anything inconsistent."""
    if len(data) < HEADER.size:
        raise CodecError(f"video payload of {len(data)} bytes is shorter than its {HEADER.size}-byte header")
    magic, version, number, channels, flags, frames, height, width, extra = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION or flags:
        raise CodecError(f"not a version-{VERSION} video payload (magic {magic!r}, version {version}, flags {flags})")
    if number not in BY_NUMBER:
        raise CodecError(f"video payload names codec number {number}, not one of the allowed "
                         f"{sorted(BY_NUMBER)} ({', '.join(PROFILES)})")
    if BY_NUMBER[number] != codec:
        raise CodecError(f"video payload is {BY_NUMBER[number]}, the manifest says {codec}")
    if not 0 < height <= MAX_SIDE or not 0 < width <= MAX_SIDE or channels > 4:
        raise CodecError(f"video payload declares {height}x{width} frames of {channels} channels "
                         f"(1 to {MAX_SIDE} pixels a side, at most 4 channels)")
    if (channels or 1) not in PROFILES[codec].pixel_formats:
        raise CodecError(f"video payload declares {channels} channels, which {codec} does not store")
    header = Header(codec, channels, frames, height, width, b"", ())
    _check_field(header, field)
    return _parse_packets(data, header, extra)


def _check_field(header: Header, field: FieldSpec) -> None:
    """The declared value must be the field's: uint8, its fixed axes, within its declared bound."""
    if field.dtype not in (None, "|u1"):
        raise CodecError(f"video frames decode to uint8, the manifest declares {field.dtype}")
    shape = header.shape
    if field.shape is not None and (len(shape) != len(field.shape) or any(
            want is not None and got != want for got, want in zip(shape, field.shape))):
        raise CodecError(f"video payload declares shape {shape}, the manifest declares {field.shape}")
    size = header.frames * header.height * header.width * (header.channels or 1)
    bound = field.max_value_bytes or field.max_raw_bytes
    if size > bound:
        raise CodecError(f"video payload declares {size} bytes of frames {shape}, above the field's "
                         f"declared bound of {bound} bytes")


def _parse_packets(data: bytes | memoryview, header: Header, extra: int) -> Header:
    """Locate the extradata and exactly `frames` non-empty packets, which must end the payload."""
    total = len(data)
    pos = HEADER.size + extra
    if pos > total:
        raise CodecError(f"video extradata of {extra} bytes runs past the payload's end ({total} bytes)")
    # Each packet takes at least 5 bytes: a count the payload cannot hold is refused before the loop.
    if header.frames * (LENGTH.size + 1) > total - pos:
        raise CodecError(f"video payload declares {header.frames} packets, more than its "
                         f"{total - pos} bytes can hold")
    packets = []
    for index in range(header.frames):
        (length,) = LENGTH.unpack_from(data, pos) if pos + LENGTH.size <= total else (0,)
        start = pos + LENGTH.size
        if length == 0 or start + length > total:
            raise CodecError(f"video packet {index} (length {length}) is empty or runs past the payload's end")
        packets.append((start, length))
        pos = start + length
    if pos != total:
        raise CodecError(f"video payload has {total - pos} bytes after its {header.frames} packets")
    return attrs.evolve(header, extradata=bytes(data[HEADER.size:HEADER.size + extra]), packets=tuple(packets))


# -- encoding ---------------------------------------------------------------------------------

def encode_frames(frames: np.ndarray, codec: str, options: Mapping[str, str]) -> bytes:
    """One window of uint8 frames (T, H, W[, C]) -> payload, encoded on one thread."""
    av = import_av()
    profile = PROFILES[codec]
    channels = frames.shape[3] if frames.ndim == 4 else 0
    fmt = profile.pixel_formats[channels or 1]
    count, height, width = frames.shape[:3]
    if count == 0:
        return pack(codec, frames.shape, b"", [])
    try:
        ctx = av.CodecContext.create(profile.encoder, "w")
        ctx.width, ctx.height, ctx.pix_fmt = width, height, fmt
        ctx.time_base = Fraction(1, 30)  # frames carry no times; the encoder wants a time base
        ctx.thread_count = 1  # same bytes on every machine; workers give the parallelism
        ctx.options = {**profile.options, **options}
        ctx.open()
        packets = []
        for index in range(count):
            frame = _to_frame(av, frames[index], fmt)
            frame.pts = index
            packets += [bytes(p) for p in ctx.encode(frame)]
        packets += [bytes(p) for p in ctx.encode(None)]
        extradata = bytes(ctx.extradata or b"")
    except av.FFmpegError as exc:
        raise CodecError(f"{profile.encoder} could not encode {frames.shape} frames: {exc}") from None
    if len(packets) != count:
        raise CodecError(f"{profile.encoder} gave {len(packets)} packets for {count} frames")
    return pack(codec, frames.shape, extradata, packets)


def _to_frame(av: ModuleType, image: np.ndarray, fmt: str) -> Any:
    """One image (H, W[, C]) as an FFmpeg frame of pixel format `fmt`."""
    if fmt == "yuv444p":  # H.264 of RGB: FFmpeg's colour conversion (lossy anyway)
        return av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24").reformat(format=fmt)
    height, width = image.shape[:2]
    pixels = image.reshape(height, width, -1)
    frame = av.VideoFrame(width, height, fmt)
    for plane, channels in zip(frame.planes, LAYOUTS[fmt]):
        view = _plane_view(plane, height, width, len(channels))
        for byte, channel in enumerate(channels):
            view[..., byte] = 0 if channel is None else pixels[..., channel]
    return frame


def _plane_view(plane: Any, height: int, width: int, depth: int) -> np.ndarray:
    """The (height, width, depth) bytes of one plane of a frame, a view over FFmpeg's buffer."""
    line, row = plane.line_size, width * depth
    if line < row or plane.buffer_size < line * height:
        raise CodecError(f"frame plane of {plane.buffer_size} bytes ({line} a line) cannot hold "
                         f"{height} rows of {row} bytes")
    rows = np.frombuffer(plane, np.uint8, line * height).reshape(height, line)
    return rows[:, :row].reshape(height, width, depth)


# -- decoding ---------------------------------------------------------------------------------

def decode_frames(data: bytes | memoryview, header: Header) -> np.ndarray:
    """The frames of a payload whose header `parse_header` checked."""
    out = np.empty(header.shape, np.uint8)
    if header.frames == 0:
        return out
    av = import_av()
    profile = PROFILES[header.codec]
    try:
        ctx = av.CodecContext.create(profile.decoder, "r")
        ctx.thread_count = 1
        ctx.width, ctx.height = header.width, header.height
        # FFmpeg refuses to allocate a picture larger than one frame of the header's size (with the
        # padding its buffers and macroblocks add: width to 64, height to 32).
        ctx.options = {"max_pixels": str(_align(header.width, 64) * _align(header.height, 32))}
        if header.extradata:
            # PyAV's setter reallocates with FFmpeg's 64 bytes of padding but leaves them unset, and
            # FFmpeg's bit readers may read them: set it with 64 zeros appended first, then at its
            # size (realloc keeps the bytes it keeps), so the padding is zeros.
            ctx.extradata = header.extradata + bytes(PADDING)
            ctx.extradata = header.extradata
        ctx.open()
        count = 0
        for start, length in header.packets:
            packet = av.Packet(bytes(data[start:start + length]))
            packet.is_keyframe = profile.intra_only  # else FFmpeg's PNG decoder adds the previous frame
            for frame in ctx.decode(packet):
                count = _store(out, count, frame, header)
        for frame in ctx.decode(None):
            count = _store(out, count, frame, header)
    except CodecError:
        raise
    except (av.FFmpegError, ValueError, TypeError, RuntimeError) as exc:  # PyAV's own, in plain words
        raise CodecError(f"{profile.decoder} could not decode the video payload: {exc}") from None
    if count != header.frames:
        raise CodecError(f"{profile.decoder} decoded {count} frames, the payload declares {header.frames}")
    return out


def _align(size: int, to: int) -> int:
    return -(-size // to) * to


def _store(out: np.ndarray, index: int, frame: Any, header: Header) -> int:
    """Check one decoded frame against the header and copy it to `out[index]`; the next index."""
    if index >= header.frames:
        raise CodecError(f"the video decoder returned more than the {header.frames} frames declared")
    channels = header.channels or 1
    fmt = frame.format.name
    if fmt not in PROFILES[header.codec].decoded_formats[channels]:
        raise CodecError(f"decoded frame {index} has pixel format {fmt}, not one {header.codec} "
                         f"gives for {channels} channels")
    if (frame.height, frame.width) != (header.height, header.width):
        raise CodecError(f"decoded frame {index} is {frame.height}x{frame.width}, the payload declares "
                         f"{header.height}x{header.width}")
    if fmt in ("yuv444p", "yuvj444p"):
        frame, fmt = frame.reformat(format="rgb24"), "rgb24"
    image = out[index].reshape(header.height, header.width, channels)  # a view: filled in place
    for plane, layout in zip(frame.planes, LAYOUTS[fmt]):
        view = _plane_view(plane, header.height, header.width, len(layout))
        for byte, channel in enumerate(layout):
            if channel is not None:
                image[..., channel] = view[..., byte]
    return index + 1


# -- the codec --------------------------------------------------------------------------------

class VideoCodec(Codec):
    """uint8 frames (T, H, W[, C]) through FFV1, FFV Huffyuv or PNG (lossless) or H.264 (lossy, `crf`).

    Config: `{"id": "av-video", "codec": "ffv1"}` (the default codec: smallest lossless),
    `{"codec": "ffvhuff"}` (lossless, ~3x faster to decode, 12-26% larger), `{"codec": "png"}`, or
    `{"codec": "h264", "crf": 23, "preset": "medium"}` (crf 0-51, lower is better; 0 is lossless
    for gray frames only). Channels: none or 1-4 for FFV1 and PNG; none, 1, 3 or 4 for ffvhuff;
    none, 1 or 3 for H.264.
    """

    codec_id: ClassVar[str] = "av-video"
    kind: ClassVar[str] = "array"
    extension: ClassVar[str] = "ncv"

    def __init__(self, codec: str = "ffv1", crf: int | None = None, preset: str | None = None) -> None:
        if codec not in PROFILES:
            raise CodecError(f"video codec {codec!r} is not one of {', '.join(PROFILES)}")
        if codec != "h264" and (crf is not None or preset is not None):
            raise CodecError(f"crf and preset are options of h264, not of {codec} (lossless)")
        if codec == "h264":
            crf = 23 if crf is None else crf
            preset = "medium" if preset is None else preset
            if type(crf) is not int or not 0 <= crf <= 51:
                raise CodecError(f"h264 crf must be an integer from 0 to 51, not {crf!r}")
            if preset not in PRESETS:
                raise CodecError(f"h264 preset must be one of {', '.join(PRESETS)}, not {preset!r}")
        import_av()  # fail here, at the writer or Dataset, with the install hint
        self.codec, self.crf, self.preset = codec, crf, preset

    def get_config(self) -> dict[str, Any]:
        """Id, codec and, for h264, crf and preset."""
        config: dict[str, Any] = {"id": self.codec_id, "codec": self.codec}
        if self.codec == "h264":
            config.update(crf=self.crf, preset=self.preset)
        return config

    def encode(self, value: np.ndarray) -> bytes:
        """Encode one window of frames."""
        if not isinstance(value, np.ndarray) or value.dtype != np.uint8 or value.ndim not in (3, 4):
            raise CodecError("video frames must be a uint8 array (time, height, width[, channels]), got "
                             f"{getattr(value, 'dtype', type(value).__name__)} {getattr(value, 'shape', '')}")
        height, width = value.shape[1:3]
        channels = value.shape[3] if value.ndim == 4 else 1
        if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
            raise CodecError(f"video frames must be 1 to {MAX_SIDE} pixels a side, got {height}x{width}")
        if channels not in PROFILES[self.codec].pixel_formats:
            raise CodecError(f"{self.codec} stores frames of {sorted(PROFILES[self.codec].pixel_formats)} "
                             f"channels, not {channels}")
        return encode_frames(value, self.codec, self._options())

    def _options(self) -> dict[str, str]:
        if self.codec == "h264":
            return {"crf": str(self.crf), "preset": self.preset}
        return {}

    def decoder(self, field: FieldSpec,
                options: Mapping[str, Any] | None = None) -> Callable[[bytes | memoryview], Any]:
        """Decode payloads of `field` (no decode options)."""
        if options:
            raise CodecError(f"{self.codec_id} takes no decode options, got {sorted(options)}")
        return lambda data: self.decode(data, field)

    def decode(self, data: bytes | memoryview, field: FieldSpec) -> np.ndarray:
        """Check the framing against the field, then decode; CodecError for anything wrong."""
        return decode_frames(data, parse_header(data, field, self.codec))
