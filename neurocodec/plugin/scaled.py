"""Integer signals kept as integers: the `scaled-int` codec for `ScaledSignal` values.

Recordings are often stored as integers with a scale to physical units (NWB's `conversion`,
`offset` and per-channel `channel_conversion`). A `ScaledSignal` (`neurocodec.nwb.series`, the
value `TimeSeriesReader` gives for such a series once told to `keep_integers`) carries the raw
integers with that scale; the `scaled-int` codec stores exactly those integers (through a lossless filter
chain) after a small header holding the scale, and decodes by default to the physical values,
`raw * conversion (* channel_conversion) + offset` computed in float64 and stored as float32, the
same arithmetic as `neurocodec.nwb.windows.physical` (so bit-identical to a float32 conversion
at write time), or with the decode option `raw=True` to the stored integers.

Payload (little-endian; docs/format.md, section 7.6):

    0   4        magic b"NCSI"
    4   1        version, 1
    5   1        raw dtype code: index in RAW_DTYPES
    6   1        ndim, 1..32
    7   1        flags: bit 0 = per-channel factors follow; other bits 0
    8   8        conversion, float64 (finite)
    16  8        offset, float64 (finite)
    24  8*ndim   shape, uint64 each
    ..  8*C      channel factors, float64 (finite), C = shape[1] (only with flag bit 0, ndim >= 2)
    ..  rest     the raw integers in the config's `order`, through the config's filter chain
                 (`neurocodec.plugin.arrays.encode_array_body`)

The scale travels with each payload, so a payload decodes alone with only its field spec (any
merge of sessions with different scales stays decodable); the NWB converter also records it
once per session in the manifest.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Callable, ClassVar, Mapping

import attrs
import numpy as np

from neurocodec import npy
from neurocodec.format import limits
from neurocodec.format.manifest import FieldSpec
from neurocodec.nwb.extract import ExtractOptions, ModalityReader, NWBExtractor
from neurocodec.nwb.series import MAX_NDIM, ScaledSignal, TimeSeriesReader
from neurocodec.nwb.windows import physical
from neurocodec.plugin.arrays import ORDERS, array_body, encode_array_body
from neurocodec.plugin.blocks import check_block_rows
from neurocodec.plugin.codecs import Codec, CodecError, check_array
from neurocodec.plugin.filters import Filter, FilterChain, signal_filters
from neurocodec.plugin.modality import Prepare
from neurocodec.plugin.windowing import WindowGrid, Windowed, lazy_rows_windowed

MAGIC = b"NCSI"
VERSION = 1
RAW_DTYPES: tuple[str, ...] = ("|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8")
"""The integer dtypes a scaled signal may hold; a payload names its own by index in this tuple."""
OUT_DTYPE = np.dtype("<f4")
"""What a scaled signal decodes to by default (physical units)."""
_FIXED = struct.Struct("<4sBBBBdd")  # magic, version, dtype code, ndim, flags, conversion, offset
_FACTORS = 1


def _raw_dtype(dtype: Any, what: str) -> np.dtype:
    """The little-endian integer dtype of RAW_DTYPES `dtype` (a numpy dtype, or a name of
    RAW_DTYPES exactly) stands for; CodecError otherwise. A config's text never reaches np.dtype."""
    name = npy.stored_name(dtype) if isinstance(dtype, np.dtype) else dtype
    if not isinstance(name, str) or name not in RAW_DTYPES:
        raise CodecError(f"{what} must be an integer dtype ({', '.join(RAW_DTYPES)}), got {str(dtype)[:40]!r}")
    return npy.dtype_named(name)


def payload_header(signal: ScaledSignal) -> bytes:
    """The payload header (see the module docstring) of `signal`."""
    raw, factors = signal.raw, signal.channel_conversion
    fixed = _FIXED.pack(MAGIC, VERSION, RAW_DTYPES.index(npy.stored_name(raw.dtype)), raw.ndim,
                        0 if factors is None else _FACTORS, signal.conversion, signal.offset)
    shape = struct.pack(f"<{raw.ndim}Q", *raw.shape)
    return fixed + shape + (b"" if factors is None else factors.astype("<f8").tobytes())


def scaled_codec(dtype: Any, *, order: str = "F", level: int = 3, block_rows: int | None = None) -> dict[str, Any]:
    """The config storing integers of `dtype` with their scale: body in `order` ("F": each
    channel's samples consecutive, for (time, channels) signals), delta along the fastest axis,
    byte shuffle and zstd at `level` (`neurocodec.plugin.filters.signal_filters`); with
    `block_rows`, the body in blocks of that many rows (`neurocodec.plugin.blocks`)."""
    raw = _raw_dtype(np.dtype(dtype), "dtype")  # a program's value, never a manifest's text
    config = {"id": ScaledIntCodec.codec_id, "raw_dtype": raw.str, "filters": signal_filters(raw, level=level),
              "order": order}
    if check_block_rows(block_rows) is not None:
        config["block_rows"] = block_rows
    return config


class ScaledIntCodec(Codec):
    """`ScaledSignal` values: raw integers and their scale (config `{"id": "scaled-int",
    "raw_dtype": "<i2", "filters": [...], "order": "C" or "F"}`). Decodes to float32 physical
    values (the field's declared dtype), or to the raw integers of `raw_dtype` with `raw=True`.
    """

    codec_id = "scaled-int"
    kind = "array"
    extension = "sci"
    uses_filters: ClassVar[bool] = True
    """The registry builds this codec with its filter table: `from_config(config, filters=...)`."""
    decode_options: ClassVar[Mapping[str, str]] = {
        "raw": "True: the stored integers (the field's raw_dtype) instead of float32 physical units",
    }

    def __init__(self, raw_dtype: str, filters: Any = (), order: str = "F", block_rows: int | None = None, *,
                 table: Mapping[str, type[Filter]] | None = None) -> None:
        self.raw_dtype = _raw_dtype(raw_dtype, "raw_dtype")
        if order not in ORDERS:
            raise CodecError(f"order must be 'C' or 'F', got {order!r}")
        self.order, self.block_rows = order, check_block_rows(block_rows)
        self.chain = filters if isinstance(filters, FilterChain) else FilterChain.from_configs(filters, table)

    @classmethod
    def from_config(cls, config: Mapping[str, Any],
                    filters: Mapping[str, type[Filter]] | None = None) -> "ScaledIntCodec":
        """Build from a stored config, allowing the filters of `filters` (default: the built-in
        ones); CodecError for anything else."""
        unknown = set(config) - {"id", "raw_dtype", "filters", "order", "block_rows"}
        if unknown:
            raise CodecError(f"codec 'scaled-int' does not take {', '.join(sorted(map(str, unknown)))}")
        if "raw_dtype" not in config:
            raise CodecError("codec 'scaled-int' needs raw_dtype, the integer dtype it stores (e.g. '<i2')")
        return cls(config["raw_dtype"], config.get("filters", []), config.get("order", "F"),
                   config.get("block_rows"), table=filters)

    def get_config(self) -> dict[str, Any]:
        """Id, raw dtype, filter configs, body order and, when set, the rows per block."""
        config = {"id": self.codec_id, "raw_dtype": self.raw_dtype.str, "filters": self.chain.configs(),
                  "order": self.order}
        if self.block_rows is not None:
            config["block_rows"] = self.block_rows
        return config

    def describe_value(self, value: Any) -> tuple[np.dtype, tuple[int, ...]] | None:
        """float32 of the raw samples' shape, for a ScaledSignal."""
        return (OUT_DTYPE, value.raw.shape) if isinstance(value, ScaledSignal) else None

    def encode(self, value: ScaledSignal) -> bytes:
        """Header with the scale, then the raw integers through the filter chain."""
        if not isinstance(value, ScaledSignal):
            raise CodecError(f"codec 'scaled-int' stores ScaledSignal values (raw integers and their scale), "
                             f"got {type(value).__name__}")
        if value.raw.dtype.newbyteorder("<") != self.raw_dtype:
            raise CodecError(f"samples are {value.raw.dtype}, the field stores {self.raw_dtype} "
                             "(raw_dtype of its codec config)")
        return payload_header(value) + encode_array_body(value.raw, self.chain, self.order, self.block_rows)

    def decode(self, data: bytes | memoryview, field: FieldSpec) -> np.ndarray:
        """Physical units (float32), checked against the field."""
        return self.decoder(field)(data)

    def decoded_field(self, field: FieldSpec, options: Mapping[str, Any]) -> FieldSpec:
        """With `raw=True`: the field's dtype becomes `raw_dtype`, its value bound scaled to it."""
        if not _raw_option(options):
            return field
        count = _value_bound(field) // OUT_DTYPE.itemsize  # the most samples a value may hold
        return attrs.evolve(field, dtype=self.raw_dtype.str, max_value_bytes=count * self.raw_dtype.itemsize)

    def decoder(self, field: FieldSpec, options: Mapping[str, Any] | None = None,
                ) -> Callable[[bytes | memoryview], np.ndarray]:
        """A decoder for `field` (physical float32, or raw integers with `raw=True`)."""
        raw = _raw_option(options or {})
        out = self.decoded_field(field, {"raw": raw})
        parse = self._signal_parser(field, raw)

        def decode(data: bytes | memoryview) -> np.ndarray:
            return check_array(parse(data).whole(), out)

        return decode

    def windowed(self, field: FieldSpec, options: Mapping[str, Any], grid: WindowGrid) -> Windowed:
        """Rows of each window: only the blocks they lie in are decoded, and only they are
        scaled to physical units."""
        raw = _raw_option(options)
        return lazy_rows_windowed(self.decoded_field(field, {"raw": raw}), grid, self._signal_parser(field, raw))

    def _signal_parser(self, field: FieldSpec, raw: bool) -> Callable[[bytes | memoryview], "ScaledRows"]:
        """payload -> its rows, header checked against the field, not yet decoded."""
        if field.dtype != OUT_DTYPE.str:
            raise CodecError(f"codec 'scaled-int' decodes to {OUT_DTYPE.str}, the manifest declares {field.dtype!r}")
        max_count = _value_bound(field) // OUT_DTYPE.itemsize

        def parse(data: bytes | memoryview) -> ScaledRows:
            view = memoryview(data).cast("B")
            signal_shape, factors, conversion, offset, start = _parse_header(view, self.raw_dtype, field, max_count)
            body = array_body(view[start:], self.raw_dtype, signal_shape, self.chain, self.order,
                              max_bytes=max_count * self.raw_dtype.itemsize, block_rows=self.block_rows)
            return ScaledRows(body, None if raw else (conversion, factors, offset))

        return parse


class ScaledRows:
    """A payload's integers, decoded row range by row range (`rows`, `whole`) and scaled to
    float32 physical units unless `scale` is None (raw)."""

    def __init__(self, body: Any, scale: tuple[float, np.ndarray | None, float] | None) -> None:
        self.body, self.scale, self.shape = body, scale, body.shape

    def rows(self, first: int, stop: int) -> np.ndarray:
        """Rows [first, stop), scaled."""
        return self._scaled(self.body.rows(first, stop))

    def whole(self) -> np.ndarray:
        """Every row, scaled."""
        return self._scaled(self.body.whole())

    def _scaled(self, values: np.ndarray) -> np.ndarray:
        if self.scale is None:
            return values
        if not values.size:  # physical steps along axis 0 even when another is empty
            return np.zeros(values.shape, OUT_DTYPE)
        conversion, factors, offset = self.scale
        with np.errstate(over="ignore"):  # beyond float32: inf, as a conversion at write time gives
            return physical(values, conversion, factors, offset)


def _raw_option(options: Mapping[str, Any]) -> bool:
    value = options.get("raw", False)
    if not isinstance(value, (bool, np.bool_)):
        raise CodecError(f"decode option raw must be True or False, got {value!r}")
    return bool(value)


def _value_bound(field: FieldSpec) -> int:
    """The most bytes one default-decoded value may take, as the manifest declares it."""
    return min(field.max_value_bytes or field.max_raw_bytes or limits.max_member_bytes(), limits.max_member_bytes())


def _parse_header(view: memoryview, raw_dtype: np.dtype, field: FieldSpec, max_count: int,
                  ) -> tuple[tuple[int, ...], np.ndarray | None, float, float, int]:
    """(shape, channel factors, conversion, offset, body offset) of a payload, every declared
    size checked against the payload length, the field and `max_count` before anything is allocated."""
    if len(view) < _FIXED.size:
        raise CodecError(f"scaled-int payload of {len(view)} bytes is shorter than its {_FIXED.size}-byte header")
    magic, version, code, ndim, flags, conversion, offset = _FIXED.unpack_from(view)
    if magic != MAGIC or version != VERSION:
        raise CodecError(f"not a scaled-int payload of version {VERSION} (magic {magic!r}, version {version})")
    if code >= len(RAW_DTYPES) or RAW_DTYPES[code] != raw_dtype.str:
        raise CodecError(f"scaled-int payload declares dtype code {code}, the field stores {raw_dtype}")
    if not 1 <= ndim <= MAX_NDIM or flags & ~_FACTORS or (flags and ndim < 2):
        raise CodecError(f"scaled-int header declares {ndim} dimensions with flags {flags}")
    if not (math.isfinite(conversion) and math.isfinite(offset)):
        raise CodecError("scaled-int header declares a conversion or offset that is not finite")
    end = _FIXED.size + 8 * ndim
    if end > len(view):
        raise CodecError(f"scaled-int payload of {len(view)} bytes is truncated inside its header")
    shape = struct.unpack_from(f"<{ndim}Q", view, _FIXED.size)
    _check_shape(shape, field, max_count)
    factors = None
    if flags:
        channels = shape[1]
        if end + 8 * channels > len(view):
            raise CodecError(f"scaled-int payload of {len(view)} bytes is too short for the {channels} "
                             "channel factors its header declares")
        factors = np.frombuffer(view, "<f8", channels, end)
        if not np.all(np.isfinite(factors)):
            raise CodecError("scaled-int header declares channel factors that are not finite")
        end += 8 * channels
    return shape, factors, conversion, offset, end


def _check_shape(shape: tuple[int, ...], field: FieldSpec, max_count: int) -> None:
    if field.shape is not None and (len(shape) != len(field.shape) or any(
            want is not None and got != want for got, want in zip(shape, field.shape))):
        raise CodecError(f"scaled-int header declares shape {shape}, the manifest declares {field.shape}")
    count, extent = 1, 1
    for dim in shape:  # Python ints: no overflow
        count *= dim
        extent *= max(dim, 1)
    if count > max_count:
        raise CodecError(f"scaled-int header declares shape {shape} ({count} samples), more than the "
                         f"{max_count} the manifest bounds this field's values by")
    if extent >= 1 << 60:  # numpy cannot describe it (8-byte items), even with an empty axis
        raise CodecError(f"scaled-int header declares shape {shape}, larger than any array numpy can describe")


def let_scaled_through(prepare: Prepare) -> Prepare:
    """A modality's `prepare` that passes `ScaledSignal`s through unchanged (the `scaled-int`
    codec checks them) and gives every other value to `prepare`. A ScaledSignal keeps its
    integers, so the `dtype` option (float16 for float signals) does not apply to it."""

    def prepare_value(value: Any, options: Mapping[str, Any]) -> Any:
        if not isinstance(value, ScaledSignal):
            return prepare(value, options)
        if options.get("dtype") is not None:
            raise TypeError(f"the dtype option {options['dtype']!r} converts floating-point values, and this "
                            "value is a ScaledSignal (integers with their scale, stored as they are): leave "
                            "the option out, or give the physical values as a float array")
        return value

    return prepare_value


class KeepIntegers(NWBExtractor):
    """Wraps a modality's extractor: when the converter asks for neural codecs
    (`ExtractOptions.codecs == "neural"`) and no `dtype` option asks for floats, a
    `TimeSeriesReader` it opens over an integer series with a scale keeps the integers
    (`keep_integers`), stored with the `scaled-int` codec (`scaled_codec(dtype, order=order,
    level=level)`). Everything else is read as the wrapped extractor reads it."""

    def __init__(self, extractor: NWBExtractor, *, order: str = "F", level: int = 3) -> None:
        self.extractor, self.order, self.level = extractor, order, level
        self.modality = extractor.modality

    def open(self, nwbfile: Any, options: ExtractOptions) -> ModalityReader | None:
        """The wrapped extractor's reader, keeping integers where it can."""
        reader = self.extractor.open(nwbfile, options)
        if isinstance(reader, TimeSeriesReader) and options.codecs == "neural" \
                and options.options.get("dtype") is None and reader.scaled_integers:
            reader.keep_integers(scaled_codec(reader.data.dtype, order=self.order, level=self.level,
                                              block_rows=block_rows(options.window)))
        return reader


BLOCK_ROWS = 256
"""Rows per block of a chunked conversion's integer signals. About a quarter second at 1 kHz,
where a 1 s window cut from a 10 s chunk decodes in 0.6 ms instead of 3.5 ms for the whole chunk,
for 1.3% more bytes (benchmarks/README.md, eighth session); the same for every rate, so that
sessions recorded at different rates keep one codec config."""


def block_rows(window: Any) -> int | None:
    """Rows per block in a conversion of `window` (a WindowSpec): BLOCK_ROWS for chunks
    (windows without overlap), which loaders cut windows from; None otherwise (one piece)."""
    return BLOCK_ROWS if window is not None and window.step == window.sequence_length else None
