"""NWB extractors for image data: video frames and fMRI volumes, both from ImageSeries.

- video: ImageSeries of frames (time, x, y[, channels]). Frames stored in the file are read
  window by window. External files (`external_file` with `starting_frame`) are resolved
  relative to the NWB file; decoding them needs the optional `imageio` package (with a video
  backend), and a missing file or decoder is a clear error.
- fmri: core NWB has no MRI type. In-file ImageSeries of volumes (time, x, y, z), or an
  ImageSeries whose external file is NIfTI (`.nii`, `.nii.gz`), read with the optional
  `nibabel` package (`pip install neurocodec[nifti]`).

Frames or volumes: a 4-D ImageSeries (time, x, y, 3) may be RGB video or three-slice fMRI, so
each series is classified by what it declares, in this order (`image_kind`):

1. a NIfTI external file: volumes;
2. its `dimension` (pixels on x, y (and z)), when it agrees with the data shape (x and y in
   either order): 2 entries are frames, 3 entries are volumes;
3. its `format`, when it names a volume format (`nifti`) or an image or video format (`png`,
   `tiff`, `mp4`, ...);
4. its class: an OpticalSeries holds frames;
5. otherwise its shape, only where that is unambiguous: other external files and 3-D data are
   frames, 4-D data whose last axis is not 1, 3 or 4 are volumes.

In-file 4-D data ending in 1, 3 or 4 with none of these declared is ambiguous: neither video
nor fmri takes it by default, and when a modality finds nothing else the error names the
series and says how to choose (`series={"fmri": name}` or `series={"video": name}`, or write its
`dimension`). TwoPhotonSeries are never candidates (they are calcium imaging).

Default choice: video takes the first series (by HDF5 path) that holds frames, fmri the first
that holds volumes. `series={modality: name or path}` always overrides the classification: it
takes any ImageSeries of the file. The session's manifest entry records, per image field, what
the series holds, why, and whether it was the default or chosen by `series=` (`image`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import attrs
import numpy as np

from neurocodec.nwb import (
    ExtractOptions, ModalityReader, NWBError, NWBExtractor, TimeSeriesReader, WindowSpec, find_objects,
    first_index_at, object_path, pick_series, samples_per_window,
)

NIFTI = (".nii", ".nii.gz")
VOLUME_FORMATS = ("nifti", "nii", "nii.gz")
FRAME_FORMATS = ("png", "jpg", "jpeg", "tif", "tiff", "bmp", "gif", "mp4", "avi", "mov", "mkv", "rgb", "rgba", "bgr")
CHANNELS = (1, 3, 4)


@attrs.frozen(slots=True)
class ImageKind:
    """What an ImageSeries holds: "frames", "volumes", "ambiguous" (could be either) or "neither",
    and why (a phrase for summaries and errors)."""

    kind: str
    reason: str


def _external(series: Any) -> list[str]:
    files = getattr(series, "external_file", None)
    return [] if files is None else [str(f) for f in files[:]]


def _is_nifti(series: Any) -> bool:
    return any(f.endswith(NIFTI) for f in _external(series))


def _shape(series: Any) -> tuple[int, ...]:
    shape = tuple(getattr(series.data, "shape", ()))
    return () if not shape or shape[0] == 0 else shape


def _dimension(series: Any) -> list[int] | None:
    dimension = getattr(series, "dimension", None)
    values = None if dimension is None else np.asarray(dimension).ravel()
    if values is None or values.dtype.kind not in "iuf":  # absent, or not numbers: declares nothing
        return None
    return [int(d) for d in values]


def _by_dimension(dimension: list[int] | None, shape: tuple[int, ...]) -> ImageKind | None:
    """The kind `dimension` declares when it agrees with the data shape (axes in either order,
    since writers differ on x/y versus height/width)."""
    if dimension is None:
        return None
    said = f"its dimension {dimension}"
    if len(dimension) == 2 and len(shape) in (3, 4) and sorted(dimension) == sorted(shape[1:3]):
        return ImageKind("frames", f"{said} declares 2-D frames")
    if len(dimension) == 3 and len(shape) == 4 and sorted(dimension) == sorted(shape[1:4]):
        return ImageKind("volumes", f"{said} declares 3-D volumes")
    if not shape and len(dimension) in (2, 3):  # external files: nothing to check it against
        return ImageKind("frames" if len(dimension) == 2 else "volumes", f"{said} declares it")
    return None


def _by_format(series: Any) -> ImageKind | None:
    fmt = str(getattr(series, "format", None) or "").lower().lstrip(".")
    if fmt in VOLUME_FORMATS:
        return ImageKind("volumes", f"its format is {fmt!r}")
    if fmt in FRAME_FORMATS:
        return ImageKind("frames", f"its format is {fmt!r}")
    return None


def image_kind(series: Any) -> ImageKind:
    """Whether an ImageSeries holds video frames or fMRI volumes, by what it declares: its
    `dimension` (2 entries: frames, 3: volumes; when it agrees with the data shape), a NIfTI
    external file or a `format` naming one, being an OpticalSeries (frames), then by shape alone
    where that is unambiguous (3-D data: frames; 4-D data whose last axis is not 1, 3 or 4:
    volumes). 4-D data ending in 1, 3 or 4 with nothing declared is "ambiguous"."""
    from pynwb.image import OpticalSeries

    shape = _shape(series)
    if _is_nifti(series):
        return ImageKind("volumes", "its external file is NIfTI")
    declared = _by_dimension(_dimension(series), shape) or _by_format(series)
    if declared is not None:
        return declared
    if isinstance(series, OpticalSeries):
        return ImageKind("frames", "it is an OpticalSeries")
    if _external(series):
        return ImageKind("frames", "its external file is not NIfTI")
    if len(shape) == 3:
        return ImageKind("frames", "its data are 3-D (time, x, y)")
    if len(shape) == 4 and shape[-1] not in CHANNELS:
        return ImageKind("volumes", f"its data are 4-D and the last axis ({shape[-1]}) is not colour channels")
    if len(shape) == 4:
        dimension = _dimension(series)
        declared = "it declares neither" if dimension is None else \
            f"its dimension {dimension} does not match the data shape"
        return ImageKind("ambiguous", f"its data are 4-D of shape {shape}, whose last axis ({shape[-1]}) may be "
                                      f"colour channels (video) or slices (fmri), and {declared}")
    return ImageKind("neither", f"its data have shape {shape}")


def _image_series(nwbfile: Any) -> list[Any]:
    from pynwb.image import ImageSeries
    from pynwb.ophys import TwoPhotonSeries

    return [s for s in find_objects(nwbfile, (ImageSeries,)) if not isinstance(s, TwoPhotonSeries)]


def _resolve(series: Any, options: ExtractOptions) -> list[Path]:
    if not isinstance(options.path, Path):  # an NWB file read in place from a URL
        raise NWBError(f"{options.path}: {object_path(series)} keeps its frames in external files "
                       f"({', '.join(_external(series))}), which are not read for an NWB file at a URL; "
                       "download the NWB file and its external files, then convert the local copy")
    paths = [(options.path.parent / f).resolve() for f in _external(series)]
    for p in paths:
        if not p.is_file():
            raise NWBError(f"{options.path}: {object_path(series)} refers to external file {p} "
                           "(resolved relative to the NWB file), which does not exist")
    return paths


def _choice(series: Any, options: ExtractOptions) -> dict[str, str]:
    """How the series was chosen and what it declares, for the manifest (JSON-ready)."""
    kind = image_kind(series)
    return {"holds": kind.kind, "because": kind.reason,
            "chosen_by": "default" if options.series is None else "series="}


class ImageSeriesReader(TimeSeriesReader):
    """An in-file ImageSeries read window by window; describe() also says whether it holds
    frames or volumes, why, and how it was chosen."""

    def __init__(self, modality: str, series: Any, options: ExtractOptions) -> None:
        super().__init__(modality, series, options.path, options.nan_policy)
        self.choice = _choice(series, options)

    def describe(self) -> Mapping[str, Any]:
        """The series as TimeSeriesReader describes it, and the image choice."""
        return {**super().describe(), "image": self.choice}


class ExternalFramesReader(ModalityReader):
    """Frames of an ImageSeries kept in external files, decoded on demand with a loader."""

    def __init__(self, modality: str, series: Any, frames: np.ndarray, options: ExtractOptions) -> None:
        self.modality, self.object_path, self.path = modality, object_path(series), options.path
        self.frames = frames
        self.choice = _choice(series, options)
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

    def describe(self) -> Mapping[str, Any]:
        """Object path, rate, decoded shape and dtype, and the image choice."""
        return {"object": self.object_path, "rate_hz": self.rate, "timing": "rate",
                "shape": [int(n) for n in self.frames.shape], "dtype": str(self.frames.dtype),
                "image": self.choice}


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
    """An ImageSeries of `kind` (or any ImageSeries by name), read in-file or through `load_external`."""

    kind: str

    @staticmethod
    def load_external(paths: list[Path], series: Any, options: ExtractOptions) -> np.ndarray:
        """All frames or volumes of the external files, time first."""
        raise NotImplementedError

    def open(self, nwbfile: Any, options: ExtractOptions) -> ModalityReader | None:
        """The chosen series, or None when the file holds none; NWBError when it holds only
        series that could be either video or fmri."""
        every = _image_series(nwbfile)
        if options.series is not None:
            series = pick_series(every, options.series, self.modality, options.path)
        else:
            kinds = [(s, image_kind(s)) for s in every]
            series = pick_series([s for s, k in kinds if k.kind == self.kind], None, self.modality, options.path)
            if series is None:
                self._refuse_ambiguous([(s, k) for s, k in kinds if k.kind == "ambiguous"], options)
        if series is None:
            return None
        if _external(series):
            frames = self.load_external(_resolve(series, options), series, options)
            return ExternalFramesReader(self.modality, series, frames, options)
        self.check_dtype(series, options)
        return ImageSeriesReader(self.modality, series, options)

    def check_dtype(self, series: Any, options: ExtractOptions) -> None:
        """NWBError when the modality cannot store the in-file data's dtype (default: any is fine)."""

    def _refuse_ambiguous(self, ambiguous: list[tuple[Any, ImageKind]], options: ExtractOptions) -> None:
        if not ambiguous:
            return
        series, kind = ambiguous[0]
        others = "" if len(ambiguous) == 1 else \
            f" (also undecided: {', '.join(object_path(s) for s, _ in ambiguous[1:])})"
        raise NWBError(
            f"{options.path}: {object_path(series)} may hold {self.modality} data, but {kind.reason}{others}. "
            f"Take it as {self.modality} with series={{{self.modality!r}: {series.name!r}}} (or as "
            f"{OTHER[self.modality]} with series={{{OTHER[self.modality]!r}: {series.name!r}}}), or write its "
            "`dimension` in the file: [x, y] for video frames, [x, y, z] for fMRI volumes")


class VideoExtractor(_ImageExtractor):
    """Video frames from an ImageSeries: in-file, or external files next to the NWB file."""

    modality = "video"
    kind = "frames"
    load_external = staticmethod(_video_frames)

    def check_dtype(self, series: Any, options: ExtractOptions) -> None:
        """Video frames are stored as uint8: float images are refused before anything is read,
        with what to do instead."""
        dtype = np.dtype(series.data.dtype)
        if dtype.kind not in "biu":
            raise NWBError(
                f"{options.path}: {object_path(series)} holds {dtype} images, and video frames must be integers "
                "or booleans (stored as uint8; nothing is rescaled silently): convert the frames to uint8 when "
                "writing the file, or take the series as fMRI volumes, which keep floats: request modality fmri "
                f"with series={{'fmri': {series.name!r}}}")


class FMRIExtractor(_ImageExtractor):
    """fMRI volumes from an ImageSeries: in-file, or NIfTI files (nibabel)."""

    modality = "fmri"
    kind = "volumes"
    load_external = staticmethod(_nifti_volumes)


OTHER = {"video": "fmri", "fmri": "video"}
