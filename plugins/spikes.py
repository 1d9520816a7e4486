"""Spikes: binned spike counts, shape (time bins, units).

Integral counts are stored in the smallest integer dtype that holds them (almost always uint8)
and restored to the dtype written, bit-exactly; float arrays (rates, smoothed counts) keep their
dtype. Sessions with different unit counts collate with zero padding and a mask.
"""

from neurocodec.plugin import ArrayPolicy, ModalitySpec, hookimpl
from neurocodec_plugins.nwb_spikes import UnitsExtractor


@hookimpl
def neurocodec_register_modalities(register) -> None:
    """The spikes modality."""
    register(ModalitySpec(
        name="spikes", codec={"id": "npy", "pack_integers": True}, prepare=ArrayPolicy(kinds="biuf"),
        description="binned spike counts (time, units); integers packed to the smallest dtype",
    ))


@hookimpl
def neurocodec_nwb_extractor(modality: str):
    """Binned counts from the Units table (see neurocodec_plugins.nwb_spikes)."""
    return UnitsExtractor() if modality == "spikes" else None
