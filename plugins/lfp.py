"""LFP: local field potentials, shape (channels, samples) or (samples, channels).

Signals keep the dtype they are written with; `modality_options={"lfp": {"dtype": "float16"}}`
stores float signals as float16 instead (half the bytes, lossy, so only on request).
"""

from neurocodec.plugin import ArrayPolicy, ModalitySpec, hookimpl
from neurocodec_plugins.nwb_series import LFPExtractor


@hookimpl
def neurocodec_register_modalities(register) -> None:
    """The lfp modality."""
    register(ModalitySpec(
        name="lfp", codec={"id": "npy", "pack_integers": False},
        prepare=ArrayPolicy(kinds="iuf", float_dtypes=("float16",), what="LFP signals"),
        description="local field potential; keeps its dtype, float16 on request",
        options={"dtype": "'float16' stores float signals as float16 (lossy)"},
    ))


@hookimpl
def neurocodec_nwb_extractor(modality: str):
    """ElectricalSeries inside an LFP container."""
    return LFPExtractor() if modality == "lfp" else None
