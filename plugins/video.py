"""Video: frames as uint8, shape (frames, height, width) or (frames, height, width, channels).

Frames are stored as uint8. Integer frames whose values all fit 0..255 are converted losslessly;
anything else (floats, 12-bit camera values) is an error asking the user to convert first, so
no frame is ever silently rescaled.

By default frames are stored as plain `.npy` (readable by any WebDataset tool). The codec
`av-video` (plugins/video_codec.py, needs PyAV: `pip install neurocodec[video]`) stores them
through a real codec, chosen per field at write time: lossless FFV1, ffvhuff or PNG, or, only
when asked, lossy H.264, e.g. `WebDatasetWriter(..., codecs={"video": {"id": "av-video", "codec": "ffv1"}})`.
See docs/format.md (section 7.8).
"""

from neurocodec.plugin import ArrayPolicy, ModalitySpec, hookimpl
from neurocodec_plugins.nwb_images import VideoExtractor
from neurocodec_plugins.video_codec import VideoCodec


@hookimpl
def neurocodec_register_codecs(register) -> None:
    """`av-video`: frames through FFV1, ffvhuff, PNG or H.264 (PyAV is imported only when used)."""
    register(VideoCodec)


@hookimpl
def neurocodec_register_modalities(register) -> None:
    """The video modality."""
    register(ModalitySpec(
        name="video", codec={"id": "npy", "pack_integers": False},
        prepare=ArrayPolicy(kinds="biu", store_dtype="uint8", what="video frames"),
        description="video frames, stored as uint8 (.npy; or FFV1, ffvhuff, PNG, H.264 with the av-video codec)",
    ))


@hookimpl
def neurocodec_nwb_extractor(modality: str):
    """ImageSeries frames."""
    return VideoExtractor() if modality == "video" else None
