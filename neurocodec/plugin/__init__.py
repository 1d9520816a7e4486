"""The public API for plugin authors: everything a modality plugin needs, in one import.

A minimal plugin::

    from neurocodec.plugin import ArrayPolicy, ModalitySpec, hookimpl

    @hookimpl
    def neurocodec_register_modalities(register):
        register(ModalitySpec(name="photometry", codec={"id": "npy"}, prepare=ArrayPolicy(kinds="f")))

What a plugin can provide, and the names it uses for each:

- hooks: `hookimpl` marks an implementation; the hooks themselves are documented in
  `neurocodec.plugin.hookspecs`, their `register` arguments are `ModalityRegistrar` and `CodecRegistrar`.
- a modality: `ModalitySpec`, with `ArrayPolicy` (or any `Prepare` callable) to check and
  normalise values before they are written; `as_array` converts tensors and sequences.
- a codec: subclass `Codec` (or reuse `NpyCodec`, `JsonCodec`, `TextCodec`, `BytesCodec`),
  raise `CodecError` for input it refuses; `check_array` and `smallest_integer_dtype` help, and
  `FieldSpec` is the manifest entry a codec is handed.
- array filters: `ArrayCodec` (id `ndarray`) stores an array through a lossless `FilterChain`
  (configs with ids: delta, shuffle, zstd, lz4, zlib; `signal_codec(dtype)` is the preset for
  signals); a plugin adds a filter by subclassing `Filter` and registering the class with
  `neurocodec_register_codecs`. `encode_array_body` / `decode_array_body` / `array_body` encode
  and decode an array body (in row blocks with `block_rows`) for codecs with a header of their own.
- windows cut at load time from consecutive chunks: a codec's `windowed(field, options,
  WindowGrid)` returns a `Windowed(decoder, field, cut)`; by default `rows_windowed` (decode the
  chunk, take rows), `lazy_rows_windowed` for codecs that can decode a row range alone;
  `field_rows`, `rows_plan` and `cut_rows` are the arithmetic they share.
- a collate rule (`CollateRule`): values of one field -> `Collated(data, mask)`; `collate_arrays`
  (stack, or pad with a mask) and `collate_list` are the built-in ones. The decoded values a
  rule receives are read-only views: copy before changing one. A rule allocates its output
  with `allocate_batch_tensor(shape, dtype)`: inside the DataLoader that memory is the batch's
  shared-memory slot, so the batch reaches the training process without another copy.
- integer signals with a scale to physical units: a `ScaledSignal` (raw integers, conversion,
  offset, per-channel factors) stored by the `ScaledIntCodec` (id `scaled-int`, config preset
  `scaled_codec(dtype)`) keeps the integers and decodes to float32 physical units, or to the
  integers with `decode={field: {"raw": True}}`; `let_scaled_through(prepare)` lets a modality take
  them, and `KeepIntegers(extractor)` makes an extractor's TimeSeriesReaders keep integers when
  the converter asks for neural codecs.
- an NWB extractor, the answer of the hook `neurocodec_nwb_extractor(modality)`: an
  `NWBExtractor` whose `open(nwbfile, ExtractOptions)` returns a `ModalityReader` (or None when
  the file holds none of the modality) that reads aligned windows described by a `WindowSpec`,
  raising `NWBError` (naming the file and the object) for data it cannot read.
  `TimeSeriesReader` reads any regularly sampled or timestamped series; `find_objects`,
  `object_path`, `pick_series`, `electrode_ids`, `samples_per_window`, `first_index_at`,
  `bin_spikes`, `bin_spikes_by_unit` and `EPS` are the helpers the built-in extractors use.

`neurocodec.testing` has round-trip checks for a plugin's own test suite.
"""

# Hooks
from neurocodec.plugin.hookspecs import CodecRegistrar, ModalityRegistrar, hookimpl

# Modalities
from neurocodec.plugin.modality import ArrayPolicy, ModalitySpec, Prepare, as_array, is_array, is_tensor

# Codecs
from neurocodec.plugin.codecs import (
    BytesCodec, Codec, CodecError, JsonCodec, NpyCodec, TextCodec, check_array, smallest_integer_dtype,
)
from neurocodec.format.manifest import FieldSpec

# Array filter chains and the ndarray codec
from neurocodec.plugin.filters import (
    BUILTIN_FILTERS, DeltaFilter, Filter, FilterChain, LZ4Filter, ShuffleFilter, ZlibFilter, ZstdFilter,
    signal_filters,
)
from neurocodec.plugin.arrays import ArrayCodec, array_body, decode_array_body, encode_array_body, signal_codec

# Windows cut at load time from consecutive chunks (Codec.windowed)
from neurocodec.plugin.windowing import (
    WindowGrid, Windowed, cut_rows, field_rows, lazy_rows_windowed, rows_plan, rows_windowed,
)

# Collate rules
from neurocodec.plugin.collate import Collated, CollateRule, allocate_batch_tensor, collate_arrays, collate_list

# NWB extractors
from neurocodec.nwb.extract import (
    ExtractOptions, ModalityReader, NWBError, NWBExtractor, find_objects, object_path, pick_series,
)
from neurocodec.nwb.series import TimeSeriesReader, electrode_ids
from neurocodec.nwb.windows import (
    EPS, WindowSpec, bin_spikes, bin_spikes_by_unit, first_index_at, samples_per_window,
)

# Integer signals kept as integers with their scale (the scaled-int codec)
from neurocodec.nwb.series import ScaledSignal
from neurocodec.plugin.scaled import KeepIntegers, ScaledIntCodec, let_scaled_through, scaled_codec

# Spike events (the spike-events and spike-observed codecs)
from neurocodec.plugin.events import COMMON_CLOCKS, DEFAULT_TICK_HZ, ObservedIntervals, SpikeEvents
from neurocodec.plugin.event_codecs import SpikeEventsCodec, SpikeObservedCodec

# Spike tokens (a collate function for POYO-style models)
from neurocodec.plugin.tokens import TOKEN_SPIKE, SpikeTokens, spike_tokens

__all__ = [
    # Hooks
    "CodecRegistrar", "ModalityRegistrar", "hookimpl",
    # Modalities
    "ArrayPolicy", "ModalitySpec", "Prepare", "as_array", "is_array", "is_tensor",
    # Codecs
    "BytesCodec", "Codec", "CodecError", "FieldSpec", "JsonCodec", "NpyCodec", "TextCodec", "check_array",
    "smallest_integer_dtype",
    # Array filter chains
    "ArrayCodec", "BUILTIN_FILTERS", "DeltaFilter", "Filter", "FilterChain", "LZ4Filter", "ShuffleFilter",
    "ZlibFilter", "ZstdFilter", "array_body", "decode_array_body", "encode_array_body", "signal_codec",
    "signal_filters",
    # Windows cut at load time
    "WindowGrid", "Windowed", "cut_rows", "field_rows", "lazy_rows_windowed", "rows_plan", "rows_windowed",
    # Collate rules
    "CollateRule", "Collated", "allocate_batch_tensor", "collate_arrays", "collate_list",
    # NWB extractors
    "EPS", "ExtractOptions", "ModalityReader", "NWBError", "NWBExtractor", "TimeSeriesReader", "WindowSpec",
    "bin_spikes", "bin_spikes_by_unit", "electrode_ids", "find_objects", "first_index_at", "object_path",
    "pick_series", "samples_per_window",
    # Integer signals kept as integers
    "KeepIntegers", "ScaledIntCodec", "ScaledSignal", "let_scaled_through", "scaled_codec",
    # Spike events
    "COMMON_CLOCKS", "DEFAULT_TICK_HZ", "ObservedIntervals", "SpikeEvents", "SpikeEventsCodec",
    "SpikeObservedCodec",
    # Spike tokens
    "SpikeTokens", "TOKEN_SPIKE", "spike_tokens",
]
