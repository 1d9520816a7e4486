"""Behavior: tracked variables over time, shape (time, dims): position, velocity, pupil size.

Values keep their dtype (booleans and integer event codes included); float values may be stored
as float16 on request with `modality_options={"behavior": {"dtype": "float16"}}`. Integer values
with a conversion or offset are kept as integers with the `scaled-int` codec when converted from
NWB with neural codecs.
"""

from neurocodec.plugin import ArrayPolicy, KeepIntegers, ModalitySpec, hookimpl, let_scaled_through
from neurocodec_plugins.nwb_series import BehaviorExtractor


@hookimpl
def neurocodec_register_modalities(register) -> None:
    """The behavior modality."""
    register(ModalitySpec(
        name="behavior", codec={"id": "npy", "pack_integers": False},
        prepare=let_scaled_through(ArrayPolicy(kinds="biuf", float_dtypes=("float16",), what="behavioral values")),
        description="behavioral variables (time, dims); keep their dtype, float16 on request",
        options={"dtype": "'float16' stores float values as float16 (lossy)"},
    ))


@hookimpl
def neurocodec_nwb_extractor(modality: str):
    """SpatialSeries and behavioral TimeSeries anywhere in the file."""
    return KeepIntegers(BehaviorExtractor()) if modality == "behavior" else None
