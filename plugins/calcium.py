"""Calcium: calcium-imaging traces, shape (time, rois): dF/F, fluorescence, deconvolved activity.

Values keep their dtype; float traces may be stored as float16 on request with
`modality_options={"calcium": {"dtype": "float16"}}`; integer traces with a conversion or offset
are kept as integers with the `scaled-int` codec when converted with neural codecs. Sessions
with different ROI counts collate with zero padding and a mask. From NWB files: RoiResponseSeries, see
`neurocodec_plugins.nwb_ophys` for the default choice and what is stored per session (ROI ids,
the imaging plane).
"""

from neurocodec.plugin import ArrayPolicy, KeepIntegers, ModalitySpec, hookimpl, let_scaled_through
from neurocodec_plugins.nwb_ophys import CalciumExtractor


@hookimpl
def neurocodec_register_modalities(register) -> None:
    """The calcium modality."""
    register(ModalitySpec(
        name="calcium", codec={"id": "npy", "pack_integers": False},
        prepare=let_scaled_through(ArrayPolicy(kinds="iuf", ndim=2, float_dtypes=("float16",))),
        description="calcium-imaging traces (time, rois); keep their dtype, float16 on request",
        options={"dtype": "'float16' stores float traces as float16 (lossy)"},
    ))


@hookimpl
def neurocodec_nwb_extractor(modality: str):
    """RoiResponseSeries anywhere in the file (DfOverF first, then Fluorescence, ...)."""
    return KeepIntegers(CalciumExtractor()) if modality == "calcium" else None
