"""Codecs: how one field's value becomes the bytes of a tar member, and back.

A codec is keyed by a `codec_id` that the writer stores, with the codec's config, in the
manifest (as numcodecs does), so a reader always knows how a field was encoded and can say which
plugin to install when it does not have the codec. Codecs never pickle.
"""

from __future__ import annotations

import abc
import functools
import json
from typing import Any, Callable, ClassVar, Mapping

import numpy as np

from neurocodec import npy
from neurocodec.format.manifest import FieldSpec
from neurocodec.plugin.windowing import WindowGrid, Windowed, rows_windowed


class CodecError(ValueError):
    """A value cannot be encoded, or bytes do not decode to a value of the field's declared form."""


class Codec(abc.ABC):
    """Serialises the values of one field.

    Subclasses set `codec_id` (stored in the manifest), `kind` ("array", "json", "text" or
    "bytes") and `extension` (the member's extension, e.g. "npy"), and implement `encode` and
    `decode`. Parameters go in `get_config()` / `from_config()`, which must round-trip.
    """

    codec_id: ClassVar[str]
    kind: ClassVar[str]
    extension: ClassVar[str]
    decode_options: ClassVar[Mapping[str, str]] = {}
    """The load-time decode options this codec takes (`Dataset(decode={field: {...}})`): each
    option's name and a one-line description. Codecs with options override `decoder(field, options)`."""
    declares_value_bytes: ClassVar[bool] = True
    """Whether the writer records `max_value_bytes` for this codec's fields when decoded arrays
    outgrow their payloads (a compressing codec must, so that decoding stays bounded by what the
    manifest declares). False only for `npy`, whose version-1 layout bounds values by itself."""

    def get_config(self) -> dict[str, Any]:
        """The codec's id and parameters, stored in the manifest."""
        return {"id": self.codec_id}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Codec":
        """Build the codec from a config returned by `get_config()`."""
        return construct(cls, config, f"codec {cls.codec_id!r}")

    @abc.abstractmethod
    def encode(self, value: Any) -> bytes:
        """Serialise one prepared value."""

    @abc.abstractmethod
    def decode(self, data: bytes | memoryview, field: FieldSpec) -> Any:
        """Deserialise one value, checking it against `field` (dtype, shape) as the manifest says.

        Must raise (any exception; the reader wraps it with the shard and member) rather than
        return a value that does not match the field.
        """

    def decoder(self, field: FieldSpec) -> Callable[[bytes | memoryview], Any]:
        """A function decoding this field's payloads; codecs may specialise it for speed, but it
        must check exactly what `decode` checks.

        A codec with `decode_options` takes them as a second argument, `decoder(field, options)`:
        a mapping holding only names of `decode_options` (the reader checks the names), whose
        values the codec checks (CodecError in plain words)."""
        return functools.partial(self.decode, field=field)

    def decoded_field(self, field: FieldSpec, options: Mapping[str, Any]) -> FieldSpec:
        """The field as `decoder(field, options)` gives it: dtype, shape and `max_value_bytes` of
        the decoded values, which loaders batch and size their buffers by. Unchanged by default."""
        return field

    def windowed(self, field: FieldSpec, options: Mapping[str, Any], grid: WindowGrid) -> Windowed:
        """How this field is read in load-time windows of `grid` cut from consecutive chunks (see
        `neurocodec.plugin.windowing`), with load-time `options` as for `decoder`. By default the
        chunk is decoded as usual and the window's rows taken along the first axis; ValueError
        (in plain words) for a field that cannot be cut."""
        return rows_windowed(self, field, options, grid)

    def describe_value(self, value: Any) -> tuple[np.dtype, tuple[int, ...]] | None:
        """The dtype and shape of the array a value given to the writer decodes to by default, for
        the manifest; None when the value is not an array this codec stores. A codec may take a
        value object that is not an array (spike events) and still declare the array it decodes to."""
        if isinstance(value, np.ndarray):
            return value.dtype, value.shape
        return None

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash(json.dumps(self.get_config(), sort_keys=True))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.get_config()})"


def construct(cls: type, config: Mapping[str, Any], what: str) -> Any:
    """`cls(**config)` without its "id" (a codec's or filter's parameters); CodecError naming
    `what` for parameters the class does not take."""
    params = {k: v for k, v in config.items() if k != "id"}
    try:
        return cls(**params)
    except TypeError as exc:
        raise CodecError(f"{what} does not take config {dict(config)}: {exc}") from None


def check_array(array: np.ndarray, field: FieldSpec) -> np.ndarray:
    """Raise CodecError unless `array` has the field's dtype (one of `npy.DTYPES`) and fits
    its shape."""
    want = _dtype(field.dtype)
    if field.shape is not None and array.shape == field.shape and array.dtype == want:
        return _valid_bools(array)  # the common case, fixed shapes: one comparison
    if want is not None and array.dtype != want:
        raise CodecError(f"array has dtype {array.dtype}, the manifest declares {field.dtype}")
    if field.shape is not None:
        if array.ndim != len(field.shape) or any(
            want is not None and got != want for got, want in zip(array.shape, field.shape)
        ):
            raise CodecError(f"array has shape {array.shape}, the manifest declares {field.shape}")
    return _valid_bools(array)


def _dtype(name: str | None) -> np.dtype | None:
    """The dtype a field declares; CodecError unless it is one of `npy.DTYPES` (a FieldSpec may
    be built directly, not only parsed from a manifest)."""
    if name is None:
        return None
    try:
        return npy.dtype_named(name)
    except npy.NpyError as exc:
        raise CodecError(str(exc)) from None


def _valid_bools(array: np.ndarray) -> np.ndarray:
    """`array`, unless it is boolean with bytes other than 0 and 1 (which numpy and torch do not
    define; the writer never produces them)."""
    if array.dtype.kind == "b" and array.size and array.view(np.uint8).max() > 1:
        raise CodecError("boolean array holds bytes other than 0 and 1")
    return array


class NpyCodec(Codec):
    """Numeric arrays as standard `.npy` members (bool, integer, float and complex dtypes).

    With `pack_integers=True`, integer arrays are stored in the smallest integer dtype that
    holds their values (spike counts mostly fit in uint8) and restored to the field's dtype on
    decode, bit-exactly. Decoding does not copy unless a packed dtype must be widened.
    """

    codec_id = "npy"
    kind = "array"
    extension = "npy"
    # Packed integers widen at most 8x, bounded by the field's fixed axes and max_raw_bytes: the
    # version-1 manifest, which old readers read, stays as it was.
    declares_value_bytes = False

    def __init__(self, pack_integers: bool = False) -> None:
        self.pack_integers = bool(pack_integers)

    def get_config(self) -> dict[str, Any]:
        """Id and the packing switch."""
        return {"id": self.codec_id, "pack_integers": self.pack_integers}

    def encode(self, value: np.ndarray) -> bytes:
        """Serialise, packing integers when configured."""
        if self.pack_integers and value.dtype.kind in "iu":
            value = value.astype(smallest_integer_dtype(value), copy=False)
        return npy.encode(value)

    def decoder(self, field: FieldSpec) -> Callable[[bytes | memoryview], Any]:
        """For a fixed-shape field every payload starts with one of a few known NPY headers (one
        per dtype it can be stored in): match it byte for byte and view the data, else take the
        general path, which checks the same things."""
        shape = field.shape
        want = _dtype(field.dtype)  # CodecError for any dtype outside npy.DTYPES, before any view
        if want is None or shape is None or None in shape:
            return super().decoder(field)
        stored = [want]
        if self.pack_integers and want.kind in "iu":
            stored += [np.dtype(c) for c in ("<u1", "<u2", "<u4", "<u8", "<i1", "<i2", "<i4", "<i8")
                       if np.dtype(c) != want and np.can_cast(c, want)]
        count = 1
        for d in shape:
            count *= d
        # Only dtypes of npy.DTYPES (numbers, never pointers) may ever be viewed over payload bytes.
        headers = {npy.header(dt, shape): dt for dt in stored if dt.str in npy.DTYPES}
        size = len(npy.header(want, shape))
        if any(len(h) != size for h in headers):
            return super().decoder(field)
        bools = want.kind == "b"

        def decode(data: bytes | memoryview) -> np.ndarray:
            dtype = headers.get(data[:size].tobytes() if isinstance(data, memoryview) else data[:size])
            if dtype is None or len(data) != size + count * dtype.itemsize:
                return self.decode(data, field)
            # np.ndarray over the buffer: one call instead of frombuffer + reshape (same view).
            array = np.ndarray(shape, dtype, data, size)
            if dtype != want:
                return array.astype(want)
            return _valid_bools(array) if bools else array

        return decode

    def decode(self, data: bytes | memoryview, field: FieldSpec) -> np.ndarray:
        """Parse the `.npy` payload and check it against the field."""
        array = npy.decode(data, allow_fortran=False)
        if self.pack_integers and field.dtype is not None:
            want = _dtype(field.dtype)
            if want.kind in "iu" and array.dtype != want:
                if array.dtype.kind not in "iu" or not np.can_cast(array.dtype, want):
                    raise CodecError(f"packed dtype {array.dtype} cannot widen to {want}")
                array = array.astype(want)
        return check_array(array, field)


def smallest_integer_dtype(array: np.ndarray) -> np.dtype:
    """The smallest integer dtype (unsigned when possible) that holds every value of `array`."""
    if array.size == 0:
        return array.dtype
    lo, hi = int(array.min()), int(array.max())
    candidates = ("u1", "u2", "u4", "u8") if lo >= 0 else ("i1", "i2", "i4", "i8")
    for name in candidates:
        info = np.iinfo(name)
        # Only dtypes that widen back to the original safely, so decode restores it exactly.
        if info.min <= lo and hi <= info.max and np.can_cast(name, array.dtype):
            return np.dtype(name).newbyteorder("<")
    return array.dtype


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class JsonCodec(Codec):
    """JSON values (dicts, lists, str, numbers, bools, None; numpy scalars become numbers)."""

    codec_id = "json"
    kind = "json"
    extension = "json"

    def encode(self, value: Any) -> bytes:
        """Serialise with sorted keys so equal values give equal bytes."""
        try:
            return json.dumps(value, sort_keys=True, default=_json_default).encode("utf8")
        except (TypeError, ValueError) as exc:
            raise CodecError(f"value is not JSON serialisable: {exc}") from None

    def decode(self, data: bytes | memoryview, field: FieldSpec) -> Any:
        """Parse UTF-8 JSON."""
        return json.loads(bytes(data).decode("utf8"))

    def decoder(self, field: FieldSpec) -> Callable[[bytes | memoryview], Any]:
        """Payloads this codec wrote are one JSON value without surrounding whitespace: scan that
        directly (json.loads adds a regex pass on each side); anything else goes through `decode`,
        which accepts the same documents and raises the same errors."""
        scan = json.JSONDecoder().scan_once

        def decode(data: bytes | memoryview) -> Any:
            try:
                text = str(data, "utf8")
                value, end = scan(text, 0)
            except (StopIteration, ValueError):
                return self.decode(data, field)
            return value if end == len(text) else self.decode(data, field)

        return decode


class TextCodec(Codec):
    """Strings as UTF-8 `.txt` members."""

    codec_id = "text"
    kind = "text"
    extension = "txt"

    def encode(self, value: str) -> bytes:
        """UTF-8 bytes of the string."""
        return value.encode("utf8")

    def decode(self, data: bytes | memoryview, field: FieldSpec) -> str:
        """The string back."""
        return bytes(data).decode("utf8")


class BytesCodec(Codec):
    """Raw bytes as `.bin` members, stored as they are."""

    codec_id = "bytes"
    kind = "bytes"
    extension = "bin"

    def encode(self, value: bytes) -> bytes:
        """The bytes themselves."""
        return bytes(value)

    def decode(self, data: bytes | memoryview, field: FieldSpec) -> bytes:
        """A copy of the payload."""
        return bytes(data)
