"""Turning samples into tensors and batches: `collate_webdataset` and friends."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from neurocodec.format.manifest import FieldSpec
from neurocodec.plugin.batching import collate_fields
from neurocodec.plugin.registry import Registry


def to_tensor(value: Any) -> Any:
    """A numpy array as a torch tensor, others as they are. A writable array is taken to be the
    caller's own (the loaders' samples are: each is read into a buffer of its own) and becomes
    the tensor's memory without a copy; a read-only one is memory something else keeps (a
    cached chunk a window was cut from, a value shared between samples) and is copied."""
    if isinstance(value, np.ndarray):
        return _from_numpy()(value if value.flags.writeable else value.copy())
    return value


def sample_to_tensors(sample: Mapping[str, Any]) -> dict[str, Any]:
    """Every array of a decoded sample as a tensor (as `to_tensor`); metadata, key, str, bytes and
    JSON kept."""
    from_numpy, ndarray = _from_numpy(), np.ndarray  # `to_tensor` inlined: this runs per sample
    return {k: (from_numpy(v if v.flags.writeable else v.copy()) if isinstance(v, ndarray) else v)
            for k, v in sample.items()}


_torch_from_numpy: Any = None


def _from_numpy() -> Any:
    """torch.from_numpy, imported on first use (this module is imported without torch too)."""
    global _torch_from_numpy
    if _torch_from_numpy is None:
        import torch

        _torch_from_numpy = torch.from_numpy
    return _torch_from_numpy


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
    return collate_fields(batch, fields, registry)
