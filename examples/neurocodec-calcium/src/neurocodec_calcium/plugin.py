"""The plugin module named by the entry point: it registers one codec and one modality."""

from __future__ import annotations

from neurocodec.plugin import ArrayPolicy, ModalitySpec, hookimpl

from neurocodec_calcium.codec import CalciumDeltaCodec


@hookimpl
def neurocodec_register_codecs(register) -> None:
    """The lossless `calcium-delta` codec."""
    register(CalciumDeltaCodec)


@hookimpl
def neurocodec_register_modalities(register) -> None:
    """The `calcium` modality: float traces of shape (time, rois), stored bit-exactly."""
    register(ModalitySpec(
        name="calcium",
        codec={"id": CalciumDeltaCodec.codec_id, "level": 6},
        prepare=ArrayPolicy(kinds="f", ndim=2),
        description="calcium-imaging traces (time, rois), float, lossless delta + zlib",
    ))
