"""EEG: scalp electrode signals, shape (channels, samples) or (samples, channels).

Signals keep the dtype they are written with; `modality_options={"eeg": {"dtype": "float16"}}`
stores float signals as float16 instead (lossy, so only on request).
"""

from neurocodec.plugin import ArrayPolicy, ModalitySpec, hookimpl
from neurocodec_plugins.nwb_series import EEGExtractor


@hookimpl
def neurocodec_register_modalities(register) -> None:
    """The eeg modality."""
    register(ModalitySpec(
        name="eeg", codec={"id": "npy", "pack_integers": False},
        prepare=ArrayPolicy(kinds="iuf", float_dtypes=("float16",), what="EEG signals"),
        description="EEG; keeps its dtype, float16 on request",
        options={"dtype": "'float16' stores float signals as float16 (lossy)"},
    ))


@hookimpl
def neurocodec_nwb_extractor(modality: str):
    """An ElectricalSeries chosen by name."""
    return EEGExtractor() if modality == "eeg" else None
