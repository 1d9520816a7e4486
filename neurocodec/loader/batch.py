"""Turning samples into tensors and batches: `collate_webdataset` and friends."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from neurocodec.collate import collate_arrays, collate_list
from neurocodec.format.layout import METADATA_FIELD
from neurocodec.format.manifest import FieldSpec
from neurocodec.format.reader import KEY
from neurocodec.registry import Registry

MASK_SUFFIX = "_mask"


def to_tensor(value: Any) -> Any:
    """A numpy array as a torch tensor (copied when read-only, e.g. a view of a shard); others as is."""
    import torch

    if isinstance(value, np.ndarray):
        if not value.flags.writeable:
            value = value.copy()
        return torch.from_numpy(value)
    return value


def sample_to_tensors(sample: Mapping[str, Any]) -> dict[str, Any]:
    """Every array of a decoded sample as a tensor; metadata, key, str, bytes and JSON kept."""
    return {k: to_tensor(v) for k, v in sample.items()}


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) or type(value).__module__.startswith("torch")


def _inferred_field(name: str, values: Sequence[Any]) -> FieldSpec:
    arrays = [np.asarray(v) for v in values]
    shapes = {a.shape for a in arrays}
    ndims = {len(s) for s in shapes}
    if len(ndims) != 1:
        raise ValueError(f"cannot collate {name!r}: values have different numbers of dimensions {sorted(shapes)}")
    first = arrays[0].shape
    shape = tuple(d if all(s[i] == d for s in shapes) else None for i, d in enumerate(first))
    return FieldSpec(name=name, modality="array", kind="array", codec={"id": "npy"}, extension="npy",
                     plugin="", plugin_version="", dtype=arrays[0].dtype.str, shape=shape)


def collate_webdataset(batch: Sequence[Mapping[str, Any]], fields: Sequence[FieldSpec] | None = None,
                       registry: Registry | None = None) -> dict[str, Any]:
    """Collate samples into a dict of batched tensors, through each modality's collate rule.

    Fixed-shape arrays are stacked; a field whose manifest shape has variable axes (for example
    spikes from sessions with different unit counts) is zero-padded to the longest value and
    gets `<field>_mask`, True where data is real. Metadata, keys, text, bytes and JSON stay
    lists. Without `fields` (the manifest's), shapes are inferred from the batch itself: axes
    that differ within it are padded.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    names = list(batch[0].keys())
    for i, sample in enumerate(batch):
        if set(sample) != set(names):
            raise ValueError(f"sample {i} of the batch has fields {sorted(sample)}, the first has {sorted(names)}")
    by_name = {f.name: f for f in fields or ()}
    out: dict[str, Any] = {}
    for name in names:
        values = [s[name] for s in batch]
        field = by_name.get(name)
        if name in (KEY, METADATA_FIELD) or (field is None and not _is_array(values[0])):
            out[name] = values
            continue
        if field is None:
            collated = collate_arrays(values, _inferred_field(name, values))
        elif field.kind != "array":
            collated = collate_list(values, field)
        else:
            rule = registry.modality(field.modality).collate if registry is not None else collate_arrays
            collated = rule(values, field)
        out[name] = collated.data
        if collated.mask is not None:
            out[name + MASK_SUFFIX] = collated.mask
    return out
