"""fMRI: image volumes, shape (x, y, z) or (time, x, y, z).

Volumes keep their dtype (raw scanner data is often int16); float volumes may be stored as
float16 on request with `modality_options={"fmri": {"dtype": "float16"}}`. A `ScaledSignal`
(integers and their scale) is stored as it is with the `scaled-int` codec; from NWB files with
neural codecs, in-file integer volumes with a conversion or offset are read that way, their body
in C order (delta along the last spatial axis: a window holds few volumes).
"""

from neurocodec.plugin import ArrayPolicy, KeepIntegers, ModalitySpec, hookimpl, let_scaled_through
from neurocodec_plugins.nwb_images import FMRIExtractor


@hookimpl
def neurocodec_register_modalities(register) -> None:
    """The fmri modality."""
    register(ModalitySpec(
        name="fmri", codec={"id": "npy", "pack_integers": False},
        prepare=let_scaled_through(ArrayPolicy(kinds="iuf", float_dtypes=("float16",), what="fMRI volumes")),
        description="fMRI volumes; keep their dtype, float16 on request",
        options={"dtype": "'float16' stores float volumes as float16 (lossy)"},
    ))


@hookimpl
def neurocodec_nwb_extractor(modality: str):
    """Volumes of an ImageSeries (in-file, or NIfTI through the optional nibabel extra)."""
    return KeepIntegers(FMRIExtractor(), order="C") if modality == "fmri" else None
