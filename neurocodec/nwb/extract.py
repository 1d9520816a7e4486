"""The extractor protocol: how a modality plugin finds and reads its data in an NWB file.

A plugin answers the hook `neurocodec_nwb_extractor(modality)` with an `NWBExtractor` (or None
if the modality is not its own). The converter opens each NWB file once, asks every requested
modality's extractor to `open` it, and reads every window through the returned
`ModalityReader`s, so all modalities of a window cover exactly the same time span.

`open` returns None when the file simply holds no data of the modality, and raises `NWBError`
(naming the file and the object) when it holds some but cannot be read.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Iterable, Mapping

import attrs
import numpy as np

from neurocodec.errors import NeurocodecError
from neurocodec.nwb.windows import WindowSpec

NAN_POLICIES = ("error", "skip_window", "keep")


class NWBError(NeurocodecError):
    """An NWB file cannot be converted as asked; the message names the file and the object."""


@attrs.frozen(slots=True)
class ExtractOptions:
    """What the converter tells an extractor about one file.

    `series` is the name (or path) of the series the user picked for this modality, None for the
    documented default; `options` are the modality's entries of `modality_options`;
    `nan_policy` says what a window containing NaN does ("error", "skip_window" or "keep").
    `codecs` is "neural" when the reader may give values for the neural codecs (spike events,
    raw integers with their scale) and declare them in `ModalityReader.codecs()`, "npy" when
    every value must be a plain array stored as `.npy` (the interoperable layout).
    """

    path: Path
    series: str | None = None
    options: Mapping[str, Any] = attrs.field(factory=dict)
    nan_policy: str = "error"
    codecs: str = "neural"
    window: WindowSpec | None = None
    """The conversion's windows (bin size, bins, step), for readers whose codec configs describe
    them (spike events); None outside a conversion."""


class ModalityReader(abc.ABC):
    """One modality's data located in one open NWB file, read window by window."""

    modality: str
    object_path: str

    def fields(self) -> tuple[str, ...]:
        """The sample fields `read` produces (default: just the modality's name)."""
        return (self.modality,)

    @abc.abstractmethod
    def span(self) -> tuple[float, float]:
        """The time [start, end) in seconds this series covers."""

    @abc.abstractmethod
    def read(self, start: float, spec: WindowSpec) -> Mapping[str, np.ndarray] | None:
        """The window starting at `start`: field name -> array (time first), or None when the
        series does not cover the whole window."""

    def blank(self, spec: WindowSpec) -> Mapping[str, np.ndarray]:
        """Zero-filled fields for a window this series does not cover (coverage="fill"); the
        arrays must have the shapes and dtypes `read` gives."""
        raise NWBError(f"{self.object_path}: modality {self.modality!r} cannot fill uncovered windows")

    def ids(self) -> Mapping[str, Any]:
        """Identifiers stored once per session (unit ids, channel ids, ...), JSON-ready."""
        return {}

    def codecs(self) -> Mapping[str, Mapping[str, Any]]:
        """The codec config of each of its fields that is not stored with its modality's own
        codec (`{"spikes": {"id": "spike-events", ...}}`), given to the writer; only with
        `ExtractOptions.codecs == "neural"`. Default: none. A config must hold nothing specific
        to this file (parts of several files are merged only if their fields' configs agree)."""
        return {}

    def describe(self) -> Mapping[str, Any]:
        """What was chosen and how it is read (object path, rate, shape), JSON-ready."""
        return {"object": self.object_path}


class NWBExtractor(abc.ABC):
    """Finds a modality's series in an NWB file."""

    modality: str

    @abc.abstractmethod
    def open(self, nwbfile: Any, options: ExtractOptions) -> ModalityReader | None:
        """A reader for this modality in `nwbfile`, or None if the file holds none."""


def object_path(obj: Any) -> str:
    """The HDF5 path of an NWB object read from a file (e.g. `/processing/ecephys/LFP/lfp`)."""
    data = getattr(obj, "data", None)
    parent = getattr(data, "parent", None)
    if parent is not None and hasattr(parent, "name"):
        return parent.name
    names, node = [], obj
    while node is not None and getattr(node, "parent", None) is not None:
        names.append(node.name)
        node = node.parent
    return "/" + "/".join(reversed(names))


def find_objects(nwbfile: Any, types: tuple[type, ...], where: Iterable[str] | None = None) -> list[Any]:
    """Every object in the file of one of `types`, sorted by HDF5 path (optionally only paths
    containing one of `where`)."""
    found = [o for o in nwbfile.objects.values() if isinstance(o, types)]
    if where is not None:
        keys = tuple(where)
        found = [o for o in found if any(k in object_path(o) for k in keys)]
    return sorted(found, key=object_path)


def pick_series(candidates: list[Any], requested: str | None, modality: str, path: Path) -> Any | None:
    """The series the user asked for by name or HDF5 path, else the first candidate by path.

    None when there is no candidate and nothing was requested; NWBError when the requested one
    is not among the candidates, or when a name (not a path) matches several (the message lists
    them, so a path can be given instead).
    """
    if requested is None:
        return candidates[0] if candidates else None
    for obj in candidates:
        if requested == object_path(obj):
            return obj
    named = [obj for obj in candidates if obj.name == requested]
    if len(named) == 1:
        return named[0]
    if named:
        raise NWBError(f"{path}: {len(named)} {modality} series are named {requested!r} "
                       f"({', '.join(object_path(o) for o in named)}); give its HDF5 path instead")
    names = ", ".join(object_path(o) for o in candidates) or "none"
    raise NWBError(f"{path}: no {modality} series named {requested!r}; candidates: {names}")
