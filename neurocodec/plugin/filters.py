"""Lossless filter chains for array bodies: numcodecs filters, reachable only through an allowlist.

A chain is data, stored in the manifest as a list of configs with ids, as numcodecs and zarr keep
them: `[{"id": "delta", "dtype": "<i2"}, {"id": "shuffle", "elementsize": 2}, {"id": "zstd",
"level": 3}]`. Encoding runs the filters in list order, decoding in reverse.

Safety: a config is never handed to `numcodecs.get_codec` or numcodecs' registry. Each id is
looked up in an explicit table (`BUILTIN_FILTERS`, plus the filters plugins register), each
parameter is checked (type and range) before any numcodecs object is made, and numcodecs'
codecs that can execute or dereference data (Pickle, MsgPack, the VLen and JSON object codecs,
Categorize) have no id here, so no manifest can reach them. Decoding is bounded: the chain is
told the exact decoded size, every size-preserving filter must receive exactly that many bytes,
and the one compressor allowed (last in the chain) checks its declared size (zstd frame content
size, LZ4's size prefix) against it before anything is allocated, and never outputs more.
"""

from __future__ import annotations

import abc
import zlib
from typing import Any, ClassVar, Mapping

import attrs
import numcodecs
import numpy as np

from neurocodec import npy
from neurocodec.errors import UnknownCodecError
from neurocodec.format import compression
from neurocodec.plugin.codecs import CodecError, construct

Buffer = bytes | bytearray | memoryview | np.ndarray

MAX_FILTERS = 8
"""The most filters one chain may hold (a manifest cannot make a reader loop over thousands)."""

REFUSED_IDS = frozenset({
    "pickle", "msgpack", "json", "json2", "vlen-utf8", "vlen-bytes", "vlen-array", "categorize",
})
"""numcodecs ids that can execute or dereference data: no chain and no plugin may use them."""


class Filter(abc.ABC):
    """One lossless step of a filter chain, configured by a dict with an `id`.

    Subclasses set `filter_id` and `size_preserving` (True for transforms such as delta and
    shuffle, whose output is exactly as long as their input; False for a compressor, which may
    only be the last filter of a chain), validate their parameters in `__init__` (raise
    CodecError), and implement `encode` and a bounded `decode`. Register one from a plugin with
    the `neurocodec_register_codecs` hook, like a codec: `register(MyFilter)`.
    """

    filter_id: ClassVar[str]
    size_preserving: ClassVar[bool]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Filter":
        """Build the filter from its config; CodecError for unknown or invalid parameters."""
        return construct(cls, config, f"filter {cls.filter_id!r}")

    def get_config(self) -> dict[str, Any]:
        """The filter's id and parameters, stored in the manifest."""
        return {"id": self.filter_id}

    @abc.abstractmethod
    def encode(self, data: memoryview) -> Buffer:
        """Transform the bytes `data` (a 1-d uint8 memoryview)."""

    @abc.abstractmethod
    def decode(self, data: memoryview, size: int) -> Buffer:
        """Invert `encode`, producing exactly `size` bytes and never allocating more than that;
        raise CodecError for input that does not decode to exactly `size` bytes."""

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((type(self), repr(sorted(self.get_config().items()))))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.get_config()})"


def check_int(name: str, value: Any, low: int, high: int) -> int:
    """`value` if it is an int (not a bool) within [low, high], else CodecError naming `name`."""
    if type(value) is not int or not low <= value <= high:
        raise CodecError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return value


def _bytes_of(out: Buffer) -> memoryview:
    return memoryview(out).cast("B") if not isinstance(out, np.ndarray) else memoryview(
        np.ascontiguousarray(out).reshape(-1).view(np.uint8))


class DeltaFilter(Filter):
    """numcodecs `Delta` over one integer dtype: each element minus the one before (the first is
    kept), wrapping modulo 2**bits, so it is exact. Float bits may be deltaed as the unsigned
    integer of their width (`<u4` for float32). Not defined for floats themselves (their
    differences round)."""

    filter_id = "delta"
    size_preserving = True

    def __init__(self, dtype: str) -> None:
        try:
            parsed = npy.dtype_named(dtype)
        except npy.NpyError as exc:
            raise CodecError(f"delta dtype: {exc}") from None
        if parsed.kind not in "iu":
            raise CodecError(f"delta dtype must be an integer dtype (differences of {parsed} round), got {dtype!r}")
        self.dtype = parsed
        self._codec = numcodecs.Delta(dtype=parsed)

    def get_config(self) -> dict[str, Any]:
        """Id and dtype."""
        return {"id": self.filter_id, "dtype": self.dtype.str}

    def encode(self, data: memoryview) -> Buffer:
        """Differences of consecutive elements."""
        _whole(data, self.dtype.itemsize, "delta")
        return data if not len(data) else self._codec.encode(data)

    def decode(self, data: memoryview, size: int) -> Buffer:
        """Cumulative sums (modulo 2**bits)."""
        _exact(data, size, "delta")
        _whole(data, self.dtype.itemsize, "delta")
        return data if not len(data) else self._codec.decode(data)


class ShuffleFilter(Filter):
    """numcodecs `Shuffle`: byte k of every element stored together (all low bytes, then all
    high bytes, ...), which makes the slowly varying high bytes of a signal compress well."""

    filter_id = "shuffle"
    size_preserving = True

    def __init__(self, elementsize: int) -> None:
        self.elementsize = check_int("shuffle elementsize", elementsize, 1, 16)
        self._codec = numcodecs.Shuffle(elementsize=elementsize)

    def get_config(self) -> dict[str, Any]:
        """Id and element size."""
        return {"id": self.filter_id, "elementsize": self.elementsize}

    def encode(self, data: memoryview) -> Buffer:
        """Shuffled bytes."""
        _whole(data, self.elementsize, "shuffle")
        return self._codec.encode(data) if len(data) else data

    def decode(self, data: memoryview, size: int) -> Buffer:
        """Unshuffled bytes."""
        _exact(data, size, "shuffle")
        _whole(data, self.elementsize, "shuffle")
        return self._codec.decode(data) if len(data) else data


class ZstdFilter(Filter):
    """Zstandard (numcodecs `Zstd`; frames record their content size). Decoded through the
    format's bounded decompressor: a frame declaring another size than expected is refused
    before anything is allocated."""

    filter_id = "zstd"
    size_preserving = False

    def __init__(self, level: int = 3, checksum: bool = False) -> None:
        self.level = check_int("zstd level", level, -131072, 22)
        if type(checksum) is not bool:
            raise CodecError(f"zstd checksum must be true or false, got {checksum!r}")
        self.checksum = checksum
        self._codec = numcodecs.Zstd(level=level, checksum=checksum)

    def get_config(self) -> dict[str, Any]:
        """Id, level and checksum switch."""
        return {"id": self.filter_id, "level": self.level, "checksum": self.checksum}

    def encode(self, data: memoryview) -> Buffer:
        """One zstd frame."""
        return self._codec.encode(data)

    def decode(self, data: memoryview, size: int) -> Buffer:
        """The frame's content, which must declare and be exactly `size` bytes."""
        try:
            # `size` is already bounded by the caller: it is the ceiling here, not the default one.
            return compression.decompress("zstd", data, size, max_member_bytes=max(size, 1))
        except compression.DecompressionError as exc:
            raise CodecError(f"zstd body: {exc}") from None


class LZ4Filter(Filter):
    """LZ4 (numcodecs `LZ4`: a 4-byte little-endian decoded size, then one LZ4 block). The
    size prefix is checked against the expected size before numcodecs allocates for it."""

    filter_id = "lz4"
    size_preserving = False

    def __init__(self, acceleration: int = 1) -> None:
        self.acceleration = check_int("lz4 acceleration", acceleration, 1, 65537)
        self._codec = numcodecs.LZ4(acceleration=acceleration)

    def get_config(self) -> dict[str, Any]:
        """Id and acceleration."""
        return {"id": self.filter_id, "acceleration": self.acceleration}

    def encode(self, data: memoryview) -> Buffer:
        """Size prefix and LZ4 block."""
        return self._codec.encode(data)

    def decode(self, data: memoryview, size: int) -> Buffer:
        """The block's content, which must declare and be exactly `size` bytes."""
        if len(data) < 4 or int.from_bytes(data[:4], "little") != size:
            raise CodecError(f"lz4 body does not declare the expected {size} bytes")
        try:
            out = self._codec.decode(data)
        except (RuntimeError, ValueError) as exc:
            raise CodecError(f"lz4 body does not decompress: {exc}") from None
        return _exact(_bytes_of(out), size, "lz4")


class ZlibFilter(Filter):
    """zlib (numcodecs `Zlib` encoding; RFC 1950 stream). Decoded with a bound: at most one byte
    past `size` is ever produced, and a stream that is truncated or has trailing data is refused."""

    filter_id = "zlib"
    size_preserving = False

    def __init__(self, level: int = 6) -> None:
        self.level = check_int("zlib level", level, 0, 9)
        self._codec = numcodecs.Zlib(level=level)

    def get_config(self) -> dict[str, Any]:
        """Id and level."""
        return {"id": self.filter_id, "level": self.level}

    def encode(self, data: memoryview) -> Buffer:
        """One zlib stream."""
        return self._codec.encode(data)

    def decode(self, data: memoryview, size: int) -> Buffer:
        """The stream's content, exactly `size` bytes."""
        obj = zlib.decompressobj()
        try:
            out = obj.decompress(data, size + 1)
        except zlib.error as exc:
            raise CodecError(f"zlib body does not decompress: {exc}") from None
        if not obj.eof or obj.unused_data or obj.unconsumed_tail:
            raise CodecError("zlib body is truncated, longer than declared, or has trailing data")
        return _exact(memoryview(out), size, "zlib")


def _exact(data: memoryview, size: int, name: str) -> memoryview:
    if len(data) != size:
        raise CodecError(f"{name} stage got {len(data)} bytes, expected exactly {size}")
    return data


def _whole(data: memoryview, itemsize: int, name: str) -> None:
    if len(data) % itemsize:
        raise CodecError(f"{name} stage got {len(data)} bytes, not a whole number of {itemsize}-byte elements")


BUILTIN_FILTERS: Mapping[str, type[Filter]] = {
    f.filter_id: f for f in (DeltaFilter, ShuffleFilter, ZstdFilter, LZ4Filter, ZlibFilter)
}
"""The filters every reader knows, by id (the generic plugin registers them)."""


@attrs.frozen(slots=True)
class FilterChain:
    """An ordered tuple of filters: size-preserving ones, then at most one compressor (last).

    Build it with `FilterChain.from_configs(configs, table)`; `configs()` gives back the list
    stored in the manifest.
    """

    filters: tuple[Filter, ...] = ()

    @classmethod
    def from_configs(cls, configs: Any, table: Mapping[str, type[Filter]] | None = None) -> "FilterChain":
        """Validate `configs` (a list of dicts with ids from `table`, default `BUILTIN_FILTERS`)
        and build the chain. UnknownCodecError for an id outside the table, CodecError for any
        other problem; both name the filter and its position."""
        table = BUILTIN_FILTERS if table is None else table
        if not isinstance(configs, (list, tuple)) or len(configs) > MAX_FILTERS:
            raise CodecError(f"filters must be a list of at most {MAX_FILTERS} configs, got {_short(configs)}")
        filters = []
        for position, config in enumerate(configs):
            filters.append(_build(config, position, table))
        for position, f in enumerate(filters[:-1]):
            if not f.size_preserving:
                raise CodecError(f"filter {position} ({f.filter_id!r}) is a compressor: only the last "
                                 "filter of a chain may change the size")
        return cls(tuple(filters))

    def configs(self) -> list[dict[str, Any]]:
        """The configs to store (`from_configs(chain.configs())` rebuilds an equal chain)."""
        return [f.get_config() for f in self.filters]

    def encode(self, data: Buffer) -> bytes:
        """Run every filter over `data` in order; the encoded body."""
        view = _bytes_of(data)
        for f in self.filters:
            view = _bytes_of(f.encode(view))
        out = view.obj
        return out if type(out) is bytes and len(out) == view.nbytes else view.tobytes()

    def decode(self, data: Buffer, size: int) -> memoryview:
        """Invert the chain, giving exactly `size` bytes (CodecError otherwise). No stage is
        handed more than `size` bytes to produce."""
        view = _bytes_of(data)
        for f in reversed(self.filters):
            try:
                view = _exact(_bytes_of(f.decode(view, size)), size, f.filter_id)
            except CodecError:
                raise
            except Exception as exc:  # a plugin's filter may raise anything on corrupt input
                raise CodecError(f"filter {f.filter_id!r} cannot decode the body: {type(exc).__name__}: {exc}") from None
        return _exact(view, size, "body")


def _build(config: Any, position: int, table: Mapping[str, type[Filter]]) -> Filter:
    if not isinstance(config, Mapping) or not isinstance(config.get("id"), str):
        raise CodecError(f"filter {position} must be a config with a string 'id', got {_short(config)}")
    filter_id = config["id"]
    cls = table.get(filter_id)
    if cls is None or filter_id in REFUSED_IDS:
        refused = " (refused: it can execute or dereference data)" if filter_id in REFUSED_IDS else ""
        raise UnknownCodecError(f"filter {position} id {filter_id[:40]!r} is not allowed{refused}; "
                                f"the allowed filters are {', '.join(sorted(table))}")
    try:
        return cls.from_config(config)
    except CodecError as exc:
        raise CodecError(f"filter {position} ({filter_id!r}): {exc}") from None
    except Exception as exc:  # a plugin's constructor may raise anything on a bad config
        raise CodecError(f"filter {position} ({filter_id!r}) rejects its config: {type(exc).__name__}: {exc}") from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def signal_filters(dtype: Any, *, level: int = 3) -> list[dict[str, Any]]:
    """The preset chain for (time, channels) signals of `dtype`: delta along time (for floats,
    over the unsigned integers of their bits), byte shuffle, zstd at `level`. Give it to the
    `ndarray` codec with `order="F"` so each channel's samples are consecutive (the codec's
    `signal_codec` does both)."""
    name = npy.stored_name(np.dtype(dtype))
    if name is None:
        raise CodecError(f"dtype {dtype} is not one this format stores (one of {', '.join(npy.DTYPES)})")
    dt = np.dtype(name)
    chain: list[dict[str, Any]] = []
    if dt.kind in "iuf" and dt.itemsize > 0:
        delta = dt if dt.kind in "iu" else np.dtype(f"<u{dt.itemsize}")
        chain.append({"id": "delta", "dtype": delta.str})
    if dt.itemsize > 1:
        chain.append({"id": "shuffle", "elementsize": dt.itemsize})
    chain.append({"id": "zstd", "level": level, "checksum": False})
    return chain

