"""Windows cut at load time from consecutive chunks: what a codec does to give one.

A dataset converted as consecutive chunks of a recording (`chunk_seconds=`) is read in windows
of any whole number of the conversion's bins (`WindowGrid`), at any bin offset into a chunk; a
window that runs past its chunk's end continues into the next chunk of the same stretch, never
further (`neurocodec.loader.window_slots`). For each field the loader asks the field's codec for
a `Windowed`: how to decode a chunk's payload (`decoder`), what the window's values look like
(`field`, which loaders batch by and size buffers from) and how to cut one window from the
decoded chunk values (`cut`).

`rows_windowed` is what every codec does unless it says otherwise: decode the chunk as usual
and take the window's rows along the first axis (`field_rows`), for any array field with a
fixed row count per chunk (a native-rate signal, binned counts, video frames). The spike codecs
cut their events and observation intervals instead, so that counts come out exact at any bin
size dividing the window.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Callable, Mapping, Sequence

import attrs
import numpy as np

from neurocodec.format.manifest import FieldSpec

Decoder = Callable[[bytes | memoryview], Any]


@attrs.frozen(slots=True)
class WindowGrid:
    """Windows of `window_bins` bins cut from chunks of `chunk_bins` bins of `bin_ms` ms each."""

    window_bins: int
    chunk_bins: int
    bin_ms: Fraction

    @property
    def window_ms(self) -> Fraction:
        """The window's length in ms, exactly."""
        return self.window_bins * self.bin_ms


@attrs.frozen(slots=True)
class Windowed:
    """How one field is read in windows: `decoder` turns a chunk's payload into its value,
    `field` describes a window's value, and `cut(values, offset_bins)` makes one window's value
    from the values of the chunk it starts in and, when it runs on, the next (`values` holds
    one or two), starting `offset_bins` bins into the first."""

    decoder: Decoder
    field: FieldSpec
    cut: Callable[[Sequence[Any], int], Any]


def field_rows(offset_bins: Any, window_bins: int, chunk_bins: int, rows_per_chunk: int) -> tuple[np.ndarray, int]:
    """(first row, row count) of a field stored with `rows_per_chunk` rows per chunk (a native-rate
    series, or one row per bin) for windows starting `offset_bins` into their chunk: rows counted
    from the chunk's first row, running on into the next chunk's rows when the window crosses.

    The count is the same for every window, `round(window_bins * rows / chunk_bins)` (halves up,
    as the converter sizes a window); the first row is `floor(offset_bins * rows / chunk_bins)`.
    Exact integer arithmetic; when rows are a whole multiple of bins both are exact times. A
    window that ends inside its chunk needs no row of the next chunk (first + count <= rows), and
    one that crosses needs none beyond the next (first + count <= 2 * rows): floor(a) + round(b)
    <= round(a + b)."""
    offset = np.asarray(offset_bins, dtype=np.int64)
    count = (2 * window_bins * rows_per_chunk + chunk_bins) // (2 * chunk_bins)
    return offset * rows_per_chunk // chunk_bins, int(count)


def rows_windowed(codec: Any, field: FieldSpec, options: Mapping[str, Any], grid: WindowGrid) -> Windowed:
    """The default: decode chunks as `codec.decoder` does and take each window's rows along the
    first axis. ValueError for a field that is not an array with a fixed number of rows per chunk."""
    decoded = codec.decoded_field(field, options) if options else field
    decoder = codec.decoder(field, options) if options else codec.decoder(field)
    window_field, rows, count = rows_plan(decoded, grid)

    def cut(values: Sequence[Any], offset_bins: int) -> np.ndarray:
        return cut_rows(values, int(field_rows(offset_bins, grid.window_bins, grid.chunk_bins, rows)[0]), count, rows)

    return Windowed(decoder, window_field, cut)


def lazy_rows_windowed(decoded: FieldSpec, grid: WindowGrid, parse: Callable[[bytes | memoryview], Any]) -> Windowed:
    """For codecs that can decode a few rows of a chunk: `parse(payload)` checks the payload and
    returns an object with `shape` (the chunk's array's) and `rows(first, stop)`, which decodes
    only what those rows need; `decoded` is the field as a whole chunk decodes to."""
    window_field, rows, count = rows_plan(decoded, grid)

    def cut(values: Sequence[Any], offset_bins: int) -> np.ndarray:
        first = int(field_rows(offset_bins, grid.window_bins, grid.chunk_bins, rows)[0])
        for value in values:
            if tuple(value.shape[:1]) != (rows,):
                raise ValueError(f"a chunk holds shape {tuple(value.shape)}, not {rows} rows as its manifest says")
        if first + count <= rows:
            return values[0].rows(first, first + count)
        if len(values) < 2:
            raise ValueError("the window needs rows of the next chunk, which was not read")
        return joined(values[0].rows(first, rows), values[1].rows(0, count - (rows - first)))

    return Windowed(parse, window_field, cut)


def rows_plan(decoded: FieldSpec, grid: WindowGrid) -> tuple[FieldSpec, int, int]:
    """(a window's field, rows per chunk, rows per window) of a field decoded to `decoded`;
    ValueError unless it is an array with a fixed number of rows per chunk."""
    shape = decoded.shape
    if decoded.kind != "array" or not shape or type(shape[0]) is not int or shape[0] < 1:
        raise ValueError(f"it is {decoded.kind} of shape {shape}: only arrays with a fixed number of rows per chunk "
                         "can be cut")
    rows = shape[0]
    count = field_rows(0, grid.window_bins, grid.chunk_bins, rows)[1]
    if count < 1:
        raise ValueError(f"it holds {rows} rows per chunk of {grid.chunk_bins} bins: a window of {grid.window_bins} "
                         "bins would hold none of them; choose a longer window")
    # A window holds count/rows of a chunk's rows: of its bytes too, rounded up.
    window_field = attrs.evolve(decoded, shape=(count, *shape[1:]),
                                max_value_bytes=-(-decoded.value_bound * count // rows))
    return window_field, rows, count


def joined(head: np.ndarray, tail: np.ndarray) -> np.ndarray:
    """Rows of one chunk followed by rows of the next; ValueError in the library's words when
    they are not arrays of one dtype and row shape."""
    if head.shape[1:] != tail.shape[1:] or head.dtype != tail.dtype:
        raise ValueError(f"neighbouring chunks hold {head.dtype} rows of {head.shape[1:]} and {tail.dtype} rows of "
                         f"{tail.shape[1:]}: a window cannot run across them")
    return np.concatenate([head, tail])


def cut_rows(values: Sequence[Any], first: int, count: int, rows: int) -> np.ndarray:
    """Rows [first, first + count) of the chunks' arrays laid end to end (each must have `rows`
    rows, all the same shape); a view of the first chunk's array when the window ends inside it.
    ValueError in the library's words when the chunks do not fit together."""
    for value in values:
        if not isinstance(value, np.ndarray) or value.ndim < 1 or value.shape[0] != rows:
            what = f"shape {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
            raise ValueError(f"a chunk holds {what}, not {rows} rows as its manifest says")
    if first + count <= rows:
        return values[0][first:first + count]
    if len(values) < 2:
        raise ValueError("the window needs rows of the next chunk, which was not read")
    return joined(values[0][first:], values[1][:count - (rows - first)])
