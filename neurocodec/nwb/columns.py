"""One field from several series that share their timing, combined into columns.

Real files often keep one variable per 1-D series: pynapple's Position holds three SpatialSeries
`x`, `y` and `z`. A field given a list of series (`fields={"position": ("behavior", ["x", "y",
"z"])}`) reads each through its modality's extractor and stacks their values along axis 1, in
the order given, so the field has shape (time, columns). The series must share their timing:
the same rate and start time, or the same timestamps (checked when the file is opened); their
other fields (a mask, say) are not combined.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from neurocodec.nwb.extract import ModalityReader, NWBError
from neurocodec.nwb.series import TIMESTAMP_BLOCK
from neurocodec.nwb.windows import EPS, WindowSpec


class ColumnsReader(ModalityReader):
    """Readers of one modality, one per series, read window by window and stacked as columns."""

    def __init__(self, modality: str, readers: Sequence[ModalityReader], path: Path) -> None:
        if not readers:
            raise ValueError("ColumnsReader needs at least one reader")
        self.modality, self.readers, self.path = modality, list(readers), path
        self.object_path = ", ".join(r.object_path for r in self.readers)
        for reader in self.readers[1:]:
            _check_same_timing(self.readers[0], reader, path)

    def span(self) -> tuple[float, float]:
        """The span the series share (checked equal when opened)."""
        return self.readers[0].span()

    def read(self, start: float, spec: WindowSpec) -> Mapping[str, np.ndarray] | None:
        """Every series' window, stacked along axis 1; None when any does not cover it."""
        parts = []
        for reader in self.readers:
            values = reader.read(start, spec)
            if values is None:
                return None
            parts.append(values[self.modality])
        return {self.modality: _stack(parts, self.path, self.object_path)}

    def blank(self, spec: WindowSpec) -> Mapping[str, np.ndarray]:
        """Zeros of the stacked shape."""
        parts = [reader.blank(spec)[self.modality] for reader in self.readers]
        return {self.modality: _stack(parts, self.path, self.object_path)}

    def ids(self) -> Mapping[str, Any]:
        """Each column's series, in column order, with the ids its reader reports."""
        return {"columns": [{"object": r.object_path, **dict(r.ids())} for r in self.readers]}

    def describe(self) -> Mapping[str, Any]:
        """The series combined, in column order, each as its reader describes it."""
        return {"object": [r.object_path for r in self.readers],
                "columns": [dict(r.describe()) for r in self.readers]}


def _stack(parts: list[np.ndarray], path: Path, objects: str) -> np.ndarray:
    """Values (time, ...) of each series as columns: 1-D values become one column each."""
    columns = [p.reshape(len(p), -1) if p.ndim != 2 else p for p in parts]
    if len({c.shape[0] for c in columns}) != 1:
        raise NWBError(f"{path}: series {objects} give windows of different lengths "
                       f"({[c.shape[0] for c in columns]}); they do not share their timing")
    if len({c.dtype for c in columns}) != 1:
        columns = [c.astype(np.result_type(*columns)) for c in columns]
    return np.concatenate(columns, axis=1)


def _check_same_timing(first: ModalityReader, other: ModalityReader, path: Path) -> None:
    """NWBError unless `other` has the same span, rate and timestamps as `first`."""
    where = f"{path}: series {first.object_path} and {other.object_path}"
    (a0, a1), (b0, b1) = first.span(), other.span()
    if abs(a0 - b0) > EPS * max(1.0, abs(a0)) or abs(a1 - b1) > EPS * max(1.0, abs(a1)):
        raise NWBError(f"{where} cover different times ([{a0}, {a1}) and [{b0}, {b1}) s); "
                       "only series sharing their timing can be combined into one field")
    rate_a, rate_b = getattr(first, "rate", None), getattr(other, "rate", None)
    if rate_a is not None and rate_b is not None and abs(rate_a - rate_b) > EPS * max(1.0, rate_a):
        raise NWBError(f"{where} have different rates ({rate_a:g} and {rate_b:g} Hz); "
                       "only series sharing their timing can be combined into one field")
    stamps_a, stamps_b = getattr(first, "timestamps", None), getattr(other, "timestamps", None)
    if (stamps_a is None) != (stamps_b is None):
        raise NWBError(f"{where}: one is timed by a rate, the other by timestamps; "
                       "only series sharing their timing can be combined into one field")
    if stamps_a is not None and not _same_values(stamps_a, stamps_b):
        raise NWBError(f"{where} have different timestamps; "
                       "only series sharing their timing can be combined into one field")


def _same_values(a: Any, b: Any) -> bool:
    """Whether two 1-D datasets hold the same values, compared block by block."""
    if a is b:
        return True
    if len(a) != len(b):
        return False
    for i0 in range(0, len(a), TIMESTAMP_BLOCK):
        block = slice(i0, i0 + TIMESTAMP_BLOCK)
        if not np.array_equal(np.asarray(a[block]), np.asarray(b[block])):
            return False
    return True
