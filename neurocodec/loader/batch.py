"""Turning samples into tensors and batches: `collate_webdataset` and friends."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from neurocodec.plugin.collate import Collated, CollateRule, collate_arrays, collate_list
from neurocodec.errors import UnknownModalityError
from neurocodec.format.layout import METADATA_FIELD
from neurocodec.format.manifest import FieldSpec
from neurocodec.dataset.reader import KEY
from neurocodec.plugin.manager import default_registry
from neurocodec.plugin.modality import is_array
from neurocodec.plugin.registry import Registry

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


def collate_rule(field: FieldSpec, registry: Registry) -> CollateRule:
    """The collate rule of `field`: that of the ModalitySpec registered for its modality (the
    default, `collate_arrays`, means `collate_list` for a field that is not an array).

    A modality no installed plugin provides is an UnknownModalityError naming the field and
    saying what to install, as `Dataset` does for a missing codec.
    """
    try:
        rule = registry.modality(field.modality).collate
    except UnknownModalityError:
        raise UnknownModalityError(
            f"modality {field.modality!r} (field {field.name!r}) is not provided by any installed "
            f"plugin, so its batches cannot be collated; install the plugin that provides it: "
            f"{field.install_hint}") from None
    return collate_list if field.kind != "array" and rule is collate_arrays else rule


def collate_webdataset(batch: Sequence[Mapping[str, Any]], fields: Sequence[FieldSpec] | None = None,
                       registry: Registry | None = None) -> dict[str, Any]:
    """Collate samples into a dict of batched tensors, through each modality's collate rule.

    With `fields` (the manifest's, e.g. `Dataset.fields`) each field is batched by the rule of
    its modality's ModalitySpec in `registry` (default: the installed plugins), as
    `create_webdataset_dataloader` does: for the built-in array modalities, fixed-shape arrays
    are stacked and a field whose manifest shape has variable axes (for example spikes from
    sessions with different unit counts) is zero-padded to the longest value and gets
    `<field>_mask`, True where data is real; text, bytes and JSON stay lists. Metadata and keys
    stay lists. Without `fields` no modality is known: arrays are stacked, zero-padding the axes
    that differ within the batch, and everything else stays a list.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    names = list(batch[0].keys())
    for i, sample in enumerate(batch):
        if set(sample) != set(names):
            raise ValueError(f"sample {i} of the batch has fields {sorted(sample)}, the first has {sorted(names)}")
    by_name = {f.name: f for f in fields or ()}
    if by_name and registry is None:
        registry = default_registry()
    out: dict[str, Any] = {}
    for name in names:
        values = [s[name] for s in batch]
        collated = _collate_field(name, values, by_name.get(name), registry)
        out[name] = collated.data
        if collated.mask is not None:
            out[name + MASK_SUFFIX] = collated.mask
    return out


def _collate_field(name: str, values: list[Any], field: FieldSpec | None, registry: Registry | None) -> Collated:
    if name in (KEY, METADATA_FIELD) or (field is None and not is_array(values[0])):
        return Collated(values)
    if field is None:
        return collate_arrays(values, _inferred_field(name, values))
    return collate_rule(field, registry)(values, field)
