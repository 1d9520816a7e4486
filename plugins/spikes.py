"""Spikes: binned spike counts, shape (time bins, units), or each window's spike events.

Integral counts are stored in the smallest integer dtype that holds them (almost always uint8)
and restored to the dtype written, bit-exactly; float arrays (rates, smoothed counts) keep their
dtype. Sessions with different unit counts collate with zero padding and a mask.

A `SpikeEvents` value (spike times and units of one window) is stored with the `spike-events`
codec (`codecs={"spikes": {"id": "spike-events", "bins": ..., "bin_size_ms": ...}}`; the NWB
converter's default): it decodes to counts at any bin size dividing the window, or to events,
which batch as a list (`collate_fn=SpikeTokens(...)` batches them as tokens instead: see
`neurocodec.plugin.tokens`). The observation mask of such a window is an `ObservedIntervals` value,
stored by the `spike-observed` codec under the fallback modality `spikes_observed` (any field
holding one, such as `spikes_observed` or `units_a_observed`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from neurocodec.plugin import (
    ArrayPolicy, Collated, FieldSpec, ModalitySpec, ObservedIntervals, SpikeEvents, SpikeEventsCodec,
    SpikeObservedCodec, collate_arrays, collate_list, hookimpl,
)
from neurocodec_plugins.nwb_spikes import UnitsExtractor

_COUNTS = ArrayPolicy(kinds="biuf")


def prepare_spikes(value: Any, options: Mapping[str, Any]) -> Any:
    """Spike events as they are (validated when made); anything else as binned counts."""
    if isinstance(value, SpikeEvents):
        return value
    return _COUNTS(value, options)


def prepare_observed(value: Any, options: Mapping[str, Any]) -> ObservedIntervals:
    """Observation intervals as they are."""
    if not isinstance(value, ObservedIntervals):
        raise TypeError(f"expected ObservedIntervals, got {type(value).__name__}")
    return value


def collate_spikes(values: Sequence[Any], field: FieldSpec) -> Collated:
    """Counts stacked (padded with a mask when sessions differ in units); events as a list
    (the loader's `collate_fn=SpikeTokens(...)` makes tokens of them before this rule runs)."""
    if field.kind != "array" or isinstance(values[0], SpikeEvents):
        return collate_list(values, field)
    return collate_arrays(values, field)


@hookimpl
def neurocodec_register_codecs(register) -> None:
    """The spike-event codecs."""
    register(SpikeEventsCodec)
    register(SpikeObservedCodec)


@hookimpl
def neurocodec_register_modalities(register) -> None:
    """The spikes modality, and the fallback modality of observation intervals."""
    register(ModalitySpec(
        name="spikes", codec={"id": "npy", "pack_integers": True}, prepare=prepare_spikes, collate=collate_spikes,
        description="binned spike counts (time, units), integers packed to the smallest dtype; or SpikeEvents "
                    "with the spike-events codec",
    ))
    register(ModalitySpec(
        name="spikes_observed", codec={"id": "spike-observed"}, prepare=prepare_observed,
        description="when each unit was observed in a window of spike events (ObservedIntervals), decoded to "
                    "a (bins, units) mask", fallback=True, accepts=lambda v: isinstance(v, ObservedIntervals),
    ))


@hookimpl
def neurocodec_nwb_extractor(modality: str):
    """Spikes from the Units table (see neurocodec_plugins.nwb_spikes)."""
    return UnitsExtractor() if modality == "spikes" else None
