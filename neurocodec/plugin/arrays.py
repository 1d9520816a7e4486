"""The `ndarray` codec: a strict NPY header describing the array, then a filter-chain-encoded body.

Payload (docs/format.md, section 7.5): the NPY 1.0 header `npy.header(dtype, shape)` of the decoded
array (one of `npy.DTYPES`, C order), then the array's bytes, in the element order the config's
`order` names ("C": last axis fastest; "F": first axis fastest, so each channel of a (time,
channels) signal is consecutive and a delta runs along time), encoded by the config's filter
chain. Decoding knows the decoded size from the header before it decodes anything, and refuses
a header that does not match the field (dtype, fixed axes) or declares more bytes than the
manifest bounds the field's values by (`max_value_bytes`, else `max_raw_bytes`).

`encode_array_body` / `decode_array_body` are the body alone, for codecs that wrap an array in
a header of their own.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, ClassVar, Mapping

import numpy as np

from neurocodec import npy
from neurocodec.format import limits
from neurocodec.format.manifest import FieldSpec
from neurocodec.plugin.blocks import BlockedBody, check_block_rows, encode_blocks
from neurocodec.plugin.codecs import Codec, CodecError, check_array
from neurocodec.plugin.filters import Filter, FilterChain, signal_filters
from neurocodec.plugin.windowing import WindowGrid, Windowed, lazy_rows_windowed

ORDERS = ("C", "F")


def encode_array_body(array: np.ndarray, chain: FilterChain, order: str = "C", block_rows: int | None = None) -> bytes:
    """The bytes of `array` (a dtype of `npy.DTYPES`, stored little-endian) in `order`, run
    through `chain`; with `block_rows`, in row blocks (`neurocodec.plugin.blocks`)."""
    _check_order(order)
    name = npy.stored_name(array.dtype)
    if name is None:
        raise CodecError(f"dtype {array.dtype} is not stored by this format (one of {', '.join(npy.DTYPES)})")
    if array.dtype.str != name:
        array = array.astype(name)
    if block_rows is None:
        return _encode_plain(array, chain, order)
    if array.ndim < 1:
        raise CodecError("block_rows needs arrays with at least one axis")
    return encode_blocks(array, block_rows, lambda block: _encode_plain(block, chain, order))


def _encode_plain(array: np.ndarray, chain: FilterChain, order: str) -> bytes:
    flat = np.ravel(array, order=order)  # a view when already laid out so, else one copy
    return chain.encode(flat.view(np.uint8))


def decode_array_body(data: bytes | memoryview, dtype: np.dtype, shape: tuple[int, ...], chain: FilterChain,
                      order: str = "C", *, max_bytes: int | None = None, block_rows: int | None = None) -> np.ndarray:
    """Invert `encode_array_body`: a read-only, C-contiguous array of `dtype` and `shape`.

    The decoded size (`shape` x itemsize) is checked against `max_bytes` (default: the per-member
    ceiling, `limits.max_member_bytes()`) before anything is decoded; every filter then produces
    exactly that size or raises CodecError."""
    return array_body(data, dtype, shape, chain, order, max_bytes=max_bytes, block_rows=block_rows).whole()


def array_body(data: bytes | memoryview, dtype: np.dtype, shape: tuple[int, ...], chain: FilterChain,
               order: str = "C", *, max_bytes: int | None = None, block_rows: int | None = None) -> Any:
    """The body, its size checked, as an object whose `rows(first, stop)` and `whole()` decode it
    (only the blocks asked for, when it is in blocks)."""
    _check_order(order)
    dtype = _storable(dtype)
    size = _nbytes(dtype, shape)
    bound = limits.max_member_bytes() if max_bytes is None else max_bytes
    if size > bound:
        raise CodecError(f"array of shape {tuple(shape)} and dtype {dtype} is {size} bytes, "
                         f"above the {bound} bytes the manifest allows for this field")
    view = memoryview(data).cast("B")

    def decode(body: memoryview, body_shape: tuple[int, ...]) -> np.ndarray:
        return _decode_plain(body, dtype, body_shape, chain, order)

    if block_rows is None:
        return _WholeBody(decode(view, tuple(shape)))
    return BlockedBody(view, dtype, tuple(shape), block_rows, decode)


def _decode_plain(data: memoryview, dtype: np.dtype, shape: tuple[int, ...], chain: FilterChain,
                  order: str) -> np.ndarray:
    size = _nbytes(dtype, shape)
    body = chain.decode(data, size)
    if order == "F" and len(shape) > 1:
        array = np.ascontiguousarray(np.ndarray(shape, dtype, body, order="F"))
    else:
        array = np.frombuffer(body, dtype, count=size // dtype.itemsize if dtype.itemsize else 0)
        array = array.reshape(shape)
    array.flags.writeable = False
    return array


class _WholeBody:
    """A body decoded at once (not in blocks), with the same interface as `BlockedBody`."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = array.shape

    def whole(self) -> np.ndarray:
        return self.array

    def rows(self, first: int, stop: int) -> np.ndarray:
        return self.array[first:stop]


class ArrayCodec(Codec):
    """Numeric arrays through a lossless filter chain (config `{"id": "ndarray", "filters":
    [...], "order": "C" or "F"}`, and optionally `"block_rows": n` to store the body in blocks
    of n rows, so that windows cut at load time decode only the rows they need). Decoded values
    are read-only, C-contiguous arrays of the field's dtype and shape, bit-exact."""

    codec_id = "ndarray"
    kind = "array"
    extension = "nda"
    uses_filters: ClassVar[bool] = True
    """The registry builds this codec with its filter table: `from_config(config, filters=...)`."""

    def __init__(self, filters: Any = (), order: str = "C", block_rows: int | None = None, *,
                 table: Mapping[str, type[Filter]] | None = None) -> None:
        _check_order(order)
        self.order, self.block_rows = order, check_block_rows(block_rows)
        self.chain = filters if isinstance(filters, FilterChain) else FilterChain.from_configs(filters, table)

    @classmethod
    def from_config(cls, config: Mapping[str, Any],
                    filters: Mapping[str, type[Filter]] | None = None) -> "ArrayCodec":
        """Build from a stored config, allowing the filters of `filters` (default: the built-in
        ones); CodecError/UnknownCodecError for anything else."""
        unknown = set(config) - {"id", "filters", "order", "block_rows"}
        if unknown:
            raise CodecError(f"codec 'ndarray' does not take {', '.join(sorted(map(str, unknown)))}")
        return cls(config.get("filters", []), config.get("order", "C"), config.get("block_rows"), table=filters)

    def get_config(self) -> dict[str, Any]:
        """Id, filter configs, body order and, when set, the rows per block."""
        config = {"id": self.codec_id, "filters": self.chain.configs(), "order": self.order}
        if self.block_rows is not None:
            config["block_rows"] = self.block_rows
        return config

    def encode(self, value: np.ndarray) -> bytes:
        """NPY header of the array, then its chain-encoded body."""
        if not isinstance(value, np.ndarray):
            raise CodecError(f"codec 'ndarray' stores numpy arrays, got {type(value).__name__}")
        name = npy.stored_name(value.dtype)
        if name is None:
            raise CodecError(f"dtype {value.dtype} is not stored by this format (one of {', '.join(npy.DTYPES)})")
        return npy.header(np.dtype(name), value.shape) + encode_array_body(value, self.chain, self.order,
                                                                           self.block_rows)

    def decode(self, data: bytes | memoryview, field: FieldSpec) -> np.ndarray:
        """Check the header against the field and its size bound, then decode the body."""
        return self.decoder(field)(data)

    def decoder(self, field: FieldSpec) -> Callable[[bytes | memoryview], np.ndarray]:
        """A decoder for `field`: the bound and expected form are worked out once."""
        parse = self._body_parser(field)

        def decode(data: bytes | memoryview) -> np.ndarray:
            return check_array(parse(data).whole(), field)

        return decode

    def windowed(self, field: FieldSpec, options: Mapping[str, Any], grid: WindowGrid) -> Windowed:
        """Rows of each window, decoding only the blocks they lie in (the whole chunk without blocks)."""
        return lazy_rows_windowed(field, grid, self._body_parser(field))

    def _body_parser(self, field: FieldSpec) -> Callable[[bytes | memoryview], Any]:
        """payload -> its body (header checked against the field and the size bound), not yet decoded."""
        want = _storable(field.dtype) if field.dtype is not None else None
        # The manifest's bounds were checked against the reader's ceiling when it was parsed.
        bound = field.max_value_bytes or field.max_raw_bytes or limits.max_member_bytes()
        headers: dict[bytes, tuple[np.dtype, tuple[int, ...]]] = {}

        def parse(data: bytes | memoryview) -> Any:
            view = memoryview(data).cast("B")
            offset, key = _header_span(view)
            parsed = headers.get(key)
            if parsed is None:
                parsed = _parse(key, want, field)
                if len(headers) < 64:
                    headers[key] = parsed
            dtype, shape = parsed
            return array_body(view[offset:], dtype, shape, self.chain, self.order, max_bytes=bound,
                              block_rows=self.block_rows)

        return parse


def signal_codec(dtype: Any, *, level: int = 3, block_rows: int | None = None) -> dict[str, Any]:
    """The preset config for (time, ...) signals of `dtype`: the body in "F" order (each
    channel's samples consecutive), delta along time, byte shuffle, zstd (`signal_filters`);
    with `block_rows`, in blocks of that many rows (for long chunks cut into windows at load time).
    Give it to a writer: `WebDatasetWriter(..., codecs={"lfp": signal_codec("<i2")})`."""
    config = {"id": ArrayCodec.codec_id, "filters": signal_filters(dtype, level=level), "order": "F"}
    if check_block_rows(block_rows) is not None:
        config["block_rows"] = block_rows
    return config


def _header_span(view: memoryview) -> tuple[int, bytes]:
    """(offset of the body, the header bytes) of an NPY 1.0 header at the start of `view`."""
    if len(view) < 10 or view[:6] != npy.MAGIC or view[6] != 1:
        raise CodecError("ndarray payload does not start with an NPY 1.0 header")
    end = 10 + struct.unpack_from("<H", view, 8)[0]
    if end - 10 > npy.MAX_HEADER or end > len(view):
        raise CodecError(f"ndarray header length {end - 10} is too large or past the payload end")
    return end, bytes(view[:end])


def _parse(key: bytes, want: np.dtype | None, field: FieldSpec) -> tuple[np.dtype, tuple[int, ...]]:
    """dtype and shape of a header, checked against the field's dtype and fixed axes."""
    try:
        dtype, shape, _, fortran = npy.parse_header(key[10:], 1)
    except npy.NpyError as exc:
        raise CodecError(f"ndarray header: {exc}") from None
    if fortran:
        raise CodecError("ndarray header declares Fortran order; the body order is the codec's config")
    if want is not None and dtype != want:
        raise CodecError(f"ndarray header declares dtype {dtype}, the manifest declares {field.dtype}")
    if field.shape is not None and (len(shape) != len(field.shape) or any(
            w is not None and got != w for got, w in zip(shape, field.shape))):
        raise CodecError(f"ndarray header declares shape {shape}, the manifest declares {field.shape}")
    return dtype, shape


def _storable(dtype: Any) -> np.dtype:
    name = dtype if isinstance(dtype, str) else npy.stored_name(np.dtype(dtype))
    try:
        return npy.dtype_named(name)
    except npy.NpyError as exc:
        raise CodecError(str(exc)) from None


def _nbytes(dtype: np.dtype, shape: tuple[int, ...]) -> int:
    size = dtype.itemsize
    for dim in shape:
        if type(dim) is not int and not isinstance(dim, np.integer) or dim < 0:
            raise CodecError(f"shape {tuple(shape)} is not a tuple of non-negative integers")
        size *= int(dim)
    return size


def _check_order(order: Any) -> None:
    if order not in ORDERS:
        raise CodecError(f"order must be 'C' or 'F', got {order!r}")
