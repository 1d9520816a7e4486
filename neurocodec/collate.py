"""Collate rules: how a modality's decoded values become one batch.

A rule takes the list of values and the field's manifest entry and returns `Collated(data,
mask)`. Arrays of one shape are stacked into a preallocated tensor; a field whose manifest shape
has variable axes (None), such as spikes from sessions with different unit counts, is padded
with zeros to the longest value in the batch and gets a boolean mask of shape
(batch, *variable axis lengths) that is True where data is real. Because whether a field is
variable is fixed by the manifest, every batch of a dataset carries the same keys.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import attrs
import numpy as np

if TYPE_CHECKING:
    from neurocodec.format.manifest import FieldSpec


@attrs.frozen(slots=True)
class Collated:
    """A batched field: `data` (tensor or list) and, for padded fields, `mask`."""

    data: Any
    mask: Any = None


CollateRule = Callable[[Sequence[Any], "FieldSpec"], Collated]
"""Signature of a collate rule: (values of one field, the field) -> Collated."""


_arena: list[Any] = [None]  # the slot a DataLoader worker collates into (neurocodec.loader.slots)


@contextlib.contextmanager
def allocating_from(arena: Any) -> Iterator[None]:
    """Inside the block, `batch_tensor` takes its tensors from `arena` (an object whose
    `allocate(shape, dtype)` returns a tensor, or None when it has no room) first; None: as usual."""
    _arena[0] = arena
    try:
        yield
    finally:
        _arena[0] = None


def batch_tensor(shape: tuple[int, ...], dtype: Any, *, zero: bool = False) -> Any:
    """An uninitialised (or zeroed) tensor to collate into.

    Inside a DataLoader worker it is allocated in shared memory (the batch's slot when it fits,
    else a new segment as torch's own default_collate does), so handing the batch to the main
    process does not copy it a second time.
    """
    import torch
    from torch.utils.data import get_worker_info

    arena = _arena[0]
    if arena is not None:
        out = arena.allocate(tuple(shape), dtype)
        if out is not None:
            return out.zero_() if zero else out
    if get_worker_info() is None:
        return torch.zeros(shape, dtype=dtype) if zero else torch.empty(shape, dtype=dtype)
    numel = 1
    for d in shape:
        numel *= d
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel)
    out = torch.empty(0, dtype=dtype).new(storage).view(shape)
    return out.zero_() if zero else out


def torch_dtype(dtype: np.dtype, field: str) -> Any:
    """The torch dtype of numpy `dtype`; DatasetError naming `field` when torch has none (every
    dtype of `neurocodec.npy.DTYPES` has one from torch 2.3 on; uint16/32/64 not before)."""
    import torch

    try:
        return torch.from_numpy(np.empty(0, dtype=np.dtype(dtype.str))).dtype
    except (TypeError, ValueError, RuntimeError) as exc:
        from neurocodec.errors import DatasetError

        raise DatasetError(f"field {field!r}: torch {torch.__version__} cannot batch dtype {dtype} "
                           f"({type(exc).__name__}: {exc})") from None


def collate_arrays(values: Sequence[Any], field: "FieldSpec") -> Collated:
    """Stack fixed-shape arrays; pad variable axes to the batch maximum and return a mask."""
    import torch

    arrays = [np.asarray(v) for v in values]
    if not arrays:
        raise ValueError(f"cannot collate an empty batch of {field.name!r}")
    variable = [i for i, d in enumerate(field.shape or ()) if d is None]
    first = arrays[0]
    dtype = torch_dtype(first.dtype, field.name)
    if not variable:
        out = batch_tensor((len(arrays), *first.shape), dtype)
        np.stack(arrays, out=out.numpy())
        return Collated(out)
    shape = tuple(max(a.shape[i] for a in arrays) for i in range(first.ndim))
    out = batch_tensor((len(arrays), *shape), dtype, zero=True)
    mask = batch_tensor((len(arrays), *(shape[i] for i in variable)), torch.bool, zero=True)
    target = out.numpy()
    for b, a in enumerate(arrays):
        target[(b, *map(slice, a.shape))] = a
        mask[(b, *(slice(a.shape[i]) for i in variable))] = True
    return Collated(out, mask)


def collate_list(values: Sequence[Any], field: "FieldSpec") -> Collated:
    """Keep values as a list (JSON, text, bytes and metadata)."""
    return Collated(list(values))
