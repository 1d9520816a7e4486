"""EEG: scalp electrode signals, shape (channels, samples) or (samples, channels).

Signals keep the dtype they are written with; `modality_options={"eeg": {"dtype": "float16"}}`
stores float signals as float16 instead (lossy, so only on request). A `ScaledSignal` (integers
and their scale) is stored as it is with the `scaled-int` codec; from NWB files with neural
codecs, integer series with a conversion, offset or channel_conversion are read that way.
"""

from neurocodec.plugin import ArrayPolicy, KeepIntegers, ModalitySpec, hookimpl, let_scaled_through
from neurocodec_plugins.nwb_series import EEGExtractor


@hookimpl
def neurocodec_register_modalities(register) -> None:
    """The eeg modality."""
    register(ModalitySpec(
        name="eeg", codec={"id": "npy", "pack_integers": False},
        prepare=let_scaled_through(ArrayPolicy(kinds="iuf", float_dtypes=("float16",), what="EEG signals")),
        description="EEG; keeps its dtype, float16 on request",
        options={"dtype": "'float16' stores float signals as float16 (lossy)"},
    ))


@hookimpl
def neurocodec_nwb_extractor(modality: str):
    """An ElectricalSeries chosen by name (integers with a scale kept as integers)."""
    return KeepIntegers(EEGExtractor()) if modality == "eeg" else None
