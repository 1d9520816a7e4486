"""Batching a list of decoded samples field by field: the one place both the loader's default
collate (`neurocodec.loader.batch.collate_webdataset`) and collate functions written against the
plugin API (`SpikeTokens`) batch their fields.

With the fields' specs (the dataset's `fields`, as decoded) each field is batched by its
modality's collate rule; without them arrays are stacked (zero-padding the axes that differ,
with a `<field>_mask`) and everything else stays a list. Keys and metadata are always lists.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from neurocodec.errors import UnknownModalityError
from neurocodec.format.layout import METADATA_FIELD
from neurocodec.format.manifest import FieldSpec
from neurocodec.format.shard_reader import KEY
from neurocodec.plugin.collate import Collated, CollateRule, collate_arrays, collate_list
from neurocodec.plugin.manager import default_registry
from neurocodec.plugin.modality import is_array, is_tensor
from neurocodec.plugin.registry import Registry

MASK_SUFFIX = "_mask"


def inferred_field(name: str, values: Sequence[Any]) -> FieldSpec:
    """An array field spec for `values` when no manifest says what they are: their dtype, and
    their shape with None where it differs between them."""
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


def collate_fields(batch: Sequence[Mapping[str, Any]], fields: Sequence[FieldSpec] | None = None,
                   registry: Registry | None = None) -> dict[str, Any]:
    """Every field of `batch` (samples with the same fields) batched: `{name: data}` plus
    `{name}_mask` for padded fields (see the module documentation). `registry` defaults to the
    installed plugins when `fields` are given. Values may be numpy arrays or CPU tensors (a
    DataLoader's `collate_fn` gets tensors; the rules are given numpy arrays)."""
    by_name = {f.name: f for f in fields or ()}
    if by_name and registry is None:
        registry = default_registry()
    out: dict[str, Any] = {}
    for name in batch[0]:
        collated = _collate_field(name, [sample[name] for sample in batch], by_name.get(name), registry)
        out[name] = collated.data
        if collated.mask is not None:
            out[name + MASK_SUFFIX] = collated.mask
    return out


def _collate_field(name: str, values: list[Any], field: FieldSpec | None, registry: Registry | None) -> Collated:
    if name in (KEY, METADATA_FIELD) or (field is None and not is_array(values[0])):
        return Collated(values)
    values = [v.numpy() if is_tensor(v) else v for v in values]
    if field is None:
        return collate_arrays(values, inferred_field(name, values))
    return collate_rule(field, registry)(values, field)
