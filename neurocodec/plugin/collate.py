"""Collate rules: how a modality's decoded values become one batch.

A rule takes the list of values and the field's manifest entry and returns `Collated(data,
mask)`. Arrays of one shape are stacked into a preallocated tensor; a field whose manifest shape
has variable axes (None), such as spikes from sessions with different unit counts, is padded
with zeros to the longest value in the batch and gets a boolean mask of shape
(batch, *variable axis lengths) that is True where data is real. Because whether a field is
variable is fixed by the manifest, every batch of a dataset carries the same keys.

A rule allocates the tensors it fills with `allocate_batch_tensor`: inside a DataLoader worker of
`create_webdataset_dataloader` they lie directly in the shared-memory slot the batch is handed
to the training process in, so the batch is written once and never copied again.
"""

from __future__ import annotations

import contextlib
import contextvars
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
"""Signature of a collate rule: (values of one field, the field) -> Collated.

`values` are the field's decoded values, one per sample of the batch, in batch order (never
empty); the field is its manifest entry (`dtype`, `shape` with None for variable axes, `kind`).
A rule must not modify the values, nor anything they hold: copy first (`np.array(value)`) to
change one. An array is either the sample's own buffer (what the loaders read for one sample) or
a read-only view of bytes a loader keeps for later (windows cut from cached chunks,
`flags.writeable` False). Allocate the output with `allocate_batch_tensor`
so that it lands in the batch's shared-memory slot. `data` (and `mask`, when not None) become
`batch[field]` (and `batch[field + "_mask"]`). A ModalitySpec of a non-array kind (json, text,
bytes) that keeps the default rule, `collate_arrays`, is batched with `collate_list`.
"""


_slot: contextvars.ContextVar[Any] = contextvars.ContextVar("neurocodec_batch_slot", default=None)


@contextlib.contextmanager
def allocating_from(arena: Any) -> Iterator[None]:
    """Inside the block, `allocate_batch_tensor` takes its tensors from `arena` first (an object
    whose `allocate(shape, dtype)` returns a tensor, or None when it has no room; the loader's
    `neurocodec.loader.slots.Arena`); None: allocate as usual. Used by the loader, not by rules."""
    token = _slot.set(arena)
    try:
        yield
    finally:
        _slot.reset(token)


def allocate_batch_tensor(shape: Sequence[int], dtype: Any, *, zero: bool = False) -> Any:
    """A new CPU tensor of `shape` and torch `dtype` for a collate rule to fill: uninitialised,
    or zero-filled with `zero=True`. The zero-copy batch allocator of the plugin API.

    Inside a DataLoader worker of `create_webdataset_dataloader` the tensor is carved out of the
    shared-memory slot this batch is handed to the training process in, so a rule that writes
    its result straight into it (for example `np.stack(values, out=t.numpy())`) and returns it
    (or a view of it) as `Collated.data` or `.mask` costs no further copy. When the slot is full
    (its size comes from the manifest's `max_raw_bytes` of the array fields, times the batch
    size), the tensor is a new shared-memory segment, as torch's own default_collate makes; in
    the main process it is ordinary memory. Tensors a rule makes otherwise still work, but are
    copied once more on the way to the training process.
    """
    import torch
    from torch.utils.data import get_worker_info

    shape = tuple(shape)
    arena = _slot.get()
    if arena is not None:
        out = arena.allocate(shape, dtype)
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
        out = allocate_batch_tensor((len(arrays), *first.shape), dtype)
        np.stack(arrays, out=out.numpy())
        return Collated(out)
    shape = tuple(max(a.shape[i] for a in arrays) for i in range(first.ndim))
    out = allocate_batch_tensor((len(arrays), *shape), dtype, zero=True)
    mask = allocate_batch_tensor((len(arrays), *(shape[i] for i in variable)), torch.bool, zero=True)
    target = out.numpy()
    for b, a in enumerate(arrays):
        target[(b, *map(slice, a.shape))] = a
        mask[(b, *(slice(a.shape[i]) for i in variable))] = True
    return Collated(out, mask)


def collate_list(values: Sequence[Any], field: "FieldSpec") -> Collated:
    """Keep values as a list (JSON, text, bytes and metadata)."""
    return Collated(list(values))
