"""LFP: local field potentials, shape (channels, samples) or (samples, channels).

Signals keep the dtype they are written with; `modality_options={"lfp": {"dtype": "float16"}}`
stores float signals as float16 instead (half the bytes, lossy, so only on request). A
`ScaledSignal` (integers and their scale) is stored as it is with the `scaled-int` codec (the
generic plugin registers it for every continuous modality); from NWB files with neural codecs, integer
series with a conversion, offset or channel_conversion are read that way (`KeepIntegers`).
"""

from neurocodec.plugin import ArrayPolicy, KeepIntegers, ModalitySpec, hookimpl, let_scaled_through
from neurocodec_plugins.nwb_series import LFPExtractor


@hookimpl
def neurocodec_register_modalities(register) -> None:
    """The lfp modality."""
    register(ModalitySpec(
        name="lfp", codec={"id": "npy", "pack_integers": False},
        prepare=let_scaled_through(ArrayPolicy(kinds="iuf", float_dtypes=("float16",), what="LFP signals")),
        description="local field potential; keeps its dtype, float16 on request",
        options={"dtype": "'float16' stores float signals as float16 (lossy)"},
    ))


@hookimpl
def neurocodec_nwb_extractor(modality: str):
    """ElectricalSeries inside an LFP container (integers with a scale kept as integers)."""
    return KeepIntegers(LFPExtractor()) if modality == "lfp" else None
