"""Safe `.npy` encoding and decoding for numeric arrays.

The writer emits standard NPY 1.0 files (readable by `numpy.load`, webdataset and everyone
else). The reader accepts only what a numeric array needs: a bounded header in numpy's own
literal layout, parsed with a regular expression rather than evaluated; one of the dtypes of
`DTYPES`, spelled exactly as the writer spells it; and a declared shape whose size matches the
payload exactly. It never unpickles, and it decodes without copying (`np.frombuffer` over the
payload).
"""

from __future__ import annotations

import re
import struct

import numpy as np

MAGIC = b"\x93NUMPY"
MAX_HEADER = 4096

DTYPES: tuple[str, ...] = (
    "|b1",
    "|i1", "<i2", "<i4", "<i8",
    "|u1", "<u2", "<u4", "<u8",
    "<f2", "<f4", "<f8",
    "<c8", "<c16",
)
"""Every dtype this format stores, as numpy's dtype string (`dtype.str`) exactly as the writer
records it in the manifest and in NPY headers: bool, 8 to 64-bit integers, 16 to 64-bit floats,
64 and 128-bit complex, little-endian (`|` for one-byte types). This is the one list the
writer, the manifest parser, the index and every decode path check against (docs/format.md,
section 10.1, lists it too). Left out on purpose: object, string, unicode, void, structured,
datetime and timedelta dtypes (not numbers; an object array over stored bytes would dereference
them as pointers), extended precision (`<f16`, `<c32`: torch cannot batch them, and their size
and layout depend on the platform), and big-endian spellings (the writer stores little-endian
only, so a `>` dtype in a dataset never came from it)."""

_BY_NAME: dict[str, np.dtype] = {name: np.dtype(name) for name in DTYPES}
_HEADER = re.compile(
    r"\{\s*'descr':\s*'(?P<descr>[^']{1,16})',\s*'fortran_order':\s*(?P<fortran>True|False),"
    r"\s*'shape':\s*\((?P<shape>[0-9,\s]{0,400})\),?\s*\}\s*"
)


class NpyError(ValueError):
    """Bytes are not a well-formed NPY file of a numeric array."""


def dtype_named(name: str) -> np.dtype:
    """The numpy dtype of `name`, one of `DTYPES`; NpyError for any other string.

    Never hands `name` to `np.dtype` (which evaluates comma and shape strings)."""
    dtype = _BY_NAME.get(name) if isinstance(name, str) else None
    if dtype is None:
        shown = repr(name)[:40]
        raise NpyError(f"dtype {shown} is not one this format stores (one of {', '.join(DTYPES)})")
    return dtype


def stored_name(dtype: np.dtype) -> str | None:
    """The name in `DTYPES` an array of `dtype` is stored as (its little-endian form), or None
    when the format does not store it."""
    if dtype.fields is not None or dtype.subdtype is not None:
        return None
    try:
        name = dtype.newbyteorder("<").str
    except (TypeError, ValueError):  # dtypes numpy cannot byte-swap (e.g. variable-width strings)
        return None
    return name if name in _BY_NAME else None


def is_storable_dtype(dtype: np.dtype) -> bool:
    """True for the dtypes neurocodec stores (see `DTYPES`), in any byte order."""
    return stored_name(dtype) is not None


def header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The NPY 1.0 header (magic, length, padded dict) for a C-ordered array."""
    text = "{'descr': '%s', 'fortran_order': False, 'shape': %r, }" % (dtype.str, tuple(shape))
    # Pad with spaces so the data starts on a 64-byte boundary, as numpy does.
    total = len(MAGIC) + 4 + len(text) + 1
    text += " " * (-total % 64) + "\n"
    return MAGIC + b"\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def encode(array: np.ndarray) -> bytes:
    """Serialise an array of a storable dtype (`DTYPES`, any byte order) as NPY 1.0 bytes,
    little-endian and C-ordered."""
    name = stored_name(array.dtype)
    if name is None:
        raise NpyError(f"dtype {array.dtype} is not stored by this format (one of {', '.join(DTYPES)})")
    if array.dtype.str != name:
        array = array.astype(_BY_NAME[name])
    if not array.flags.c_contiguous:
        array = array.copy(order="C")  # np.ascontiguousarray would turn 0-d into 1-d
    # One copy of the values, straight after the header (`header + tobytes()` made two).
    return b"".join((header(array.dtype, array.shape), array.reshape(-1).view(np.uint8)))


def decode(data: bytes | memoryview, *, allow_fortran: bool = True) -> np.ndarray:
    """Parse NPY bytes into a read-only array viewing `data` (no copy).

    Raises NpyError for anything that is not an array of one of `DTYPES` whose header matches
    its payload, and, with `allow_fortran=False`, for Fortran-ordered arrays (which neurocodec
    never writes).
    """
    view = memoryview(data).cast("B")
    if len(view) < 10 or view[:6] != MAGIC:
        raise NpyError("not an NPY payload (bad magic)")
    major = view[6]
    if major == 1:
        hlen, start = struct.unpack_from("<H", view, 8)[0], 10
    elif major in (2, 3):
        if len(view) < 12:
            raise NpyError("truncated NPY header")
        hlen, start = struct.unpack_from("<I", view, 8)[0], 12
    else:
        raise NpyError(f"unsupported NPY version {major}")
    if hlen > MAX_HEADER or start + hlen > len(view):
        raise NpyError(f"NPY header length {hlen} is too large or past the payload end")
    # Every sample of a fixed-shape field carries the same header bytes: parse each once.
    key = bytes(view[:start + hlen])
    parsed = _parsed.get(key)
    if parsed is None:
        parsed = _parse_header(key[start:], major)
        if len(_parsed) >= _MAX_CACHED:
            _parsed.clear()
        _parsed[key] = parsed
    dtype, shape, count, fortran = parsed
    if fortran and not allow_fortran:
        raise NpyError("NPY payload is Fortran-ordered; this format stores C-ordered arrays only")
    offset = start + hlen
    if count * dtype.itemsize != len(view) - offset:
        raise NpyError(
            f"NPY header declares shape {shape} of {dtype} ({count * dtype.itemsize} bytes) "
            f"but the payload holds {len(view) - offset} bytes"
        )
    array = np.frombuffer(view, dtype=dtype, count=count, offset=offset)
    if fortran:
        return array.reshape(shape[::-1]).T
    return array.reshape(shape)


_parsed: dict[bytes, tuple[np.dtype, tuple[int, ...], int, bool]] = {}
_MAX_CACHED = 1024


def parse_header(raw: bytes, major: int = 1) -> tuple[np.dtype, tuple[int, ...], int, bool]:
    """(dtype, shape, element count, fortran order) of the header dict `raw` (the text after an
    NPY preamble of version `major`), strictly validated as `decode` does, without a body: for
    codecs whose body follows an NPY header in another encoding. NpyError otherwise."""
    return _parse_header(raw, major)


def _parse_header(raw: bytes, major: int) -> tuple[np.dtype, tuple[int, ...], int, bool]:
    """(dtype, shape, element count, fortran order) of a header dict, strictly validated."""
    try:
        text = raw.decode("utf8" if major == 3 else "latin1")
    except UnicodeDecodeError:
        raise NpyError("NPY header is not text") from None
    match = _HEADER.fullmatch(text)
    if match is None:
        raise NpyError(f"NPY header is not a plain numeric array header: {text[:80]!r}")
    descr = match["descr"]
    dtype = _BY_NAME.get(descr)
    if dtype is None:
        raise NpyError(f"NPY dtype {descr!r} is not a numeric dtype this format stores "
                       f"(one of {', '.join(DTYPES)})")
    shape = _parse_shape(match["shape"])
    count, extent = 1, dtype.itemsize
    for dim in shape:
        count *= dim
        extent *= max(dim, 1)
    # numpy refuses shapes whose non-zero lengths span 2**63 bytes or more, even when another
    # length is 0 (an empty array): refuse them here, in this module's own error.
    if extent >= 1 << 63:
        raise NpyError(f"NPY shape {shape} of {dtype} is larger than any array numpy can describe")
    return dtype, shape, count, match["fortran"] == "True"


def _parse_shape(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",")]
    if parts and parts[-1] == "":
        parts.pop()
    if len(parts) > 32 or any(not p.isdigit() or len(p) > 19 for p in parts):
        raise NpyError(f"NPY shape ({text}) is not a tuple of at most 32 non-negative integers")
    return tuple(int(p) for p in parts)
