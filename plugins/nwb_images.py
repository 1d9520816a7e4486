"""NWB extractors for image data: video frames and fMRI volumes, both from ImageSeries.

- video: ImageSeries of frames (time, height, width[, channels]). Frames stored in the file are
  read window by window. External files (`external_file` with `starting_frame`) are resolved
  relative to the NWB file; decoding them needs the optional `imageio` package (with a video
  backend), and a missing file or decoder is a clear error.
- fmri: core NWB has no MRI type. In-file ImageSeries of volumes (time, x, y, z), or an
  ImageSeries whose external file is NIfTI (`.nii`, `.nii.gz`), read with the optional
  `nibabel` package (`pip install neurocodec[nifti]`).

Default choice: video takes the first ImageSeries (by HDF5 path) with 3-D frames data or 4-D
data ending in 1, 3 or 4 colour channels, or a non-NIfTI external file; fmri the first with
other 4-D data or a NIfTI external file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from neurocodec.nwb import (
    ExtractOptions, ModalityReader, NWBError, NWBExtractor, TimeSeriesReader, WindowSpec, find_objects,
    first_index_at, object_path, pick_series, samples_per_window,
)

NIFTI = (".nii", ".nii.gz")


def _external(series: Any) -> list[str]:
    files = getattr(series, "external_file", None)
    return [] if files is None else [str(f) for f in files[:]]


def _is_nifti(series: Any) -> bool:
    return any(f.endswith(NIFTI) for f in _external(series))


def _in_file_ndim(series: Any) -> int:
    shape = getattr(series.data, "shape", ())
    return 0 if not shape or shape[0] == 0 else len(shape)


def _is_video(series: Any) -> bool:
    if _external(series):
        return not _is_nifti(series)
    ndim = _in_file_ndim(series)
    return ndim == 3 or (ndim == 4 and series.data.shape[-1] in (1, 3, 4))


def _is_volume(series: Any) -> bool:
    return _is_nifti(series) or (_in_file_ndim(series) == 4 and not _is_video(series))


def _image_series(nwbfile: Any) -> list[Any]:
    from pynwb.image import ImageSeries
    from pynwb.ophys import TwoPhotonSeries

    return [s for s in find_objects(nwbfile, (ImageSeries,)) if not isinstance(s, TwoPhotonSeries)]


def _resolve(series: Any, options: ExtractOptions) -> list[Path]:
    paths = [(options.path.parent / f).resolve() for f in _external(series)]
    for p in paths:
        if not p.is_file():
            raise NWBError(f"{options.path}: {object_path(series)} refers to external file {p} "
                           "(resolved relative to the NWB file), which does not exist")
    return paths


class ExternalFramesReader(ModalityReader):
    """Frames of an ImageSeries kept in external files, decoded on demand with a loader."""

    def __init__(self, modality: str, series: Any, frames: np.ndarray, options: ExtractOptions) -> None:
        self.modality, self.object_path, self.path = modality, object_path(series), options.path
        self.frames = frames
        if series.rate is None:
            raise NWBError(f"{options.path}: {self.object_path}: external frames need a rate")
        self.rate = float(series.rate)
        self.start = float(series.starting_time or 0.0)

    def span(self) -> tuple[float, float]:
        """[start, start + frames / rate)."""
        return self.start, self.start + len(self.frames) / self.rate

    def read(self, start: float, spec: WindowSpec) -> Mapping[str, np.ndarray] | None:
        """The window's frames, or None when not covered."""
        count = samples_per_window(self.rate, spec.duration)
        if count < 1:
            raise NWBError(f"{self.path}: {self.object_path} at {self.rate:g} Hz has no frame in a "
                           f"window of {spec.duration:g} s")
        i0 = first_index_at(self.start, self.rate, start)
        if i0 < 0 or i0 + count > len(self.frames):
            return None
        return {self.modality: np.asarray(self.frames[i0:i0 + count])}

    def blank(self, spec: WindowSpec) -> Mapping[str, np.ndarray]:
        """Zero frames."""
        count = samples_per_window(self.rate, spec.duration)
        return {self.modality: np.zeros((count, *self.frames.shape[1:]), dtype=self.frames.dtype)}


def _video_frames(paths: list[Path], series: Any, options: ExtractOptions) -> np.ndarray:
    try:
        import imageio.v3 as iio
    except ImportError:
        raise NWBError(f"{options.path}: {object_path(series)} keeps its frames in external files "
                       f"({', '.join(map(str, paths))}); reading them needs the optional imageio package "
                       "(pip install 'imageio[pyav]')") from None
    arrays = [np.asarray(iio.imread(p)) for p in paths]
    return np.concatenate(arrays) if len(arrays) > 1 else arrays[0]


def _nifti_volumes(paths: list[Path], series: Any, options: ExtractOptions) -> np.ndarray:
    try:
        import nibabel
    except ImportError:
        raise NWBError(f"{options.path}: {object_path(series)} keeps its volumes in NIfTI files; "
                       "reading them needs nibabel (pip install 'neurocodec[nifti]')") from None
    volumes = [np.moveaxis(np.asarray(nibabel.load(p).dataobj), -1, 0) for p in paths]
    return np.concatenate(volumes) if len(volumes) > 1 else volumes[0]


class _ImageExtractor(NWBExtractor):
    """An ImageSeries chosen by `accepts` (or by name), read in-file or through `load_external`."""

    @staticmethod
    def accepts(series: Any) -> bool:
        """Whether `series` is a default candidate for this modality."""
        raise NotImplementedError

    @staticmethod
    def load_external(paths: list[Path], series: Any, options: ExtractOptions) -> np.ndarray:
        """All frames or volumes of the external files, time first."""
        raise NotImplementedError

    def open(self, nwbfile: Any, options: ExtractOptions) -> ModalityReader | None:
        """The chosen series, or None when the file holds none."""
        every = _image_series(nwbfile)
        candidates = every if options.series is not None else [s for s in every if self.accepts(s)]
        series = pick_series(candidates, options.series, self.modality, options.path)
        if series is None:
            return None
        if _external(series):
            frames = self.load_external(_resolve(series, options), series, options)
            return ExternalFramesReader(self.modality, series, frames, options)
        return TimeSeriesReader(self.modality, series, options.path, options.nan_policy)


class VideoExtractor(_ImageExtractor):
    """Video frames from an ImageSeries: in-file, or external files next to the NWB file."""

    modality = "video"
    accepts = staticmethod(_is_video)
    load_external = staticmethod(_video_frames)


class FMRIExtractor(_ImageExtractor):
    """fMRI volumes from an ImageSeries: in-file, or NIfTI files (nibabel)."""

    modality = "fmri"
    accepts = staticmethod(_is_volume)
    load_external = staticmethod(_nifti_volumes)
