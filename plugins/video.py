"""Video: frames as uint8, shape (frames, height, width) or (frames, height, width, channels).

Frames are stored as uint8. Integer frames whose values all fit 0..255 are converted losslessly;
anything else (floats, 12-bit camera values) is an error asking the user to convert first, so
no frame is ever silently rescaled.
"""

from neurocodec.plugin import ArrayPolicy, ModalitySpec, hookimpl
from neurocodec_plugins.nwb_images import VideoExtractor


@hookimpl
def neurocodec_register_modalities(register) -> None:
    """The video modality."""
    register(ModalitySpec(
        name="video", codec={"id": "npy", "pack_integers": False},
        prepare=ArrayPolicy(kinds="biu", store_dtype="uint8", what="video frames"),
        description="video frames, stored as uint8",
    ))


@hookimpl
def neurocodec_nwb_extractor(modality: str):
    """ImageSeries frames."""
    return VideoExtractor() if modality == "video" else None
