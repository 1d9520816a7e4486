"""The plugin module named by the entry point: it registers one codec and one modality."""

from __future__ import annotations

from neurocodec.plugin import ArrayPolicy, ModalitySpec, hookimpl

from neurocodec_photometry.codec import PhotometryDeltaCodec


@hookimpl
def neurocodec_register_codecs(register) -> None:
    """The lossless `photometry-delta` codec."""
    register(PhotometryDeltaCodec)


@hookimpl
def neurocodec_register_modalities(register) -> None:
    """The `photometry` modality: float traces of shape (time, channels), stored bit-exactly."""
    register(ModalitySpec(
        name="photometry",
        codec={"id": PhotometryDeltaCodec.codec_id, "level": 6},
        prepare=ArrayPolicy(kinds="f", ndim=2),
        description="fiber-photometry traces (time, channels), float, lossless delta + zlib",
    ))
