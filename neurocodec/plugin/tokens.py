"""Spike tokens: a batch of `SpikeEvents` as the token tensors POYO-style models consume.

Every spike of a window is one token: the unit that fired (`unit_index`), when, in seconds from
the window's start (`timestamps`), and its `token_type` (`TOKEN_SPIKE`, 0). `SpikeTokens` is a
collate function (for `create_webdataset_dataloader(collate_fn=...)` or a DataLoader around
`WebDatasetLoader`) that turns a spike-events field (read with `decode={"spikes": {"as":
"events"}}`) into tokens and batches every other field as `collate_webdataset` does. For a
field `f` the batch holds, in one of two layouts (B samples, N tokens in all):

| key | `mode="pad8"` | `mode="varlen"` |
|---|---|---|
| `f_unit_index` | int64 (B, L) | int64 (N,) |
| `f_timestamps` | float32 (B, L) | float32 (N,) |
| `f_token_type` | int64 (B, L) | int64 (N,) |
| `f_mask` | bool (B, L), True on real tokens | bool (N,), all True |
| `f_batch_index` | - | int64 (N,), the sample of each token |
| `f_cu_seqlens` | - | int32 (B + 1,), offsets of each sample's tokens |
| `f_max_seqlen` | - | int, the most tokens of one sample |

L is the most tokens of one sample rounded up to a multiple of 8, and at least 8 (so no tensor
is ever zero-wide). Padding is unit 0, time 0.0, type 0, mask False. Tokens keep the events'
order (time, then unit for simultaneous spikes). `cu_seqlens` and `max_seqlen` are what
flash-attention's varlen functions take (`cu_seqlens_q`, `max_seqlen_q`).

Timestamps are the events' float64 seconds rounded to the nearest float32 (IEEE 754
round-to-nearest-even, numpy's `astype(np.float32)`): the error is at most half a float32 step,
never more than 2**-24 * t (under 30 ns for t < 1 s, under 0.48 µs for t < 16 s). Rounding keeps
the order, but two spikes less than one float32 step apart may get the same timestamp.

`unit_index` maps units into a vocabulary: called with a sample's session key
(`metadata["session"]`), it returns the vocabulary index of each of that session's units
(an integer array, one entry per unit of the field, >= 0); a mapping session -> array works
too. Without it, `unit_index` is the session-local unit index.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import attrs
import numpy as np

from neurocodec.format.layout import METADATA_FIELD
from neurocodec.format.manifest import FieldSpec
from neurocodec.format.shard_reader import KEY
from neurocodec.plugin.batching import collate_fields
from neurocodec.plugin.collate import allocate_batch_tensor
from neurocodec.plugin.events import SpikeEvents
from neurocodec.plugin.registry import Registry

TOKEN_SPIKE = 0
"""`token_type` of a spike (the only type emitted so far; padding is 0 too, masked out)."""
PAD_MULTIPLE = 8
MODES = ("pad8", "varlen")
TOKEN_KEYS = ("unit_index", "timestamps", "token_type", "mask")
VARLEN_KEYS = ("batch_index", "cu_seqlens", "max_seqlen")

UnitIndex = Callable[[str], np.ndarray]
"""session key -> the vocabulary index of each of the session's units (integers >= 0)."""


def padded_length(n_max: int) -> int:
    """The token axis of a pad8 batch whose longest sample has `n_max` tokens."""
    return max(PAD_MULTIPLE, -(-n_max // PAD_MULTIPLE) * PAD_MULTIPLE)


def spike_tokens(events: Sequence[SpikeEvents], mode: str = "pad8",
                 units: Sequence[np.ndarray] | None = None) -> dict[str, Any]:
    """The token tensors of one batch of `events` (keys of `TOKEN_KEYS`, and `VARLEN_KEYS` with
    mode "varlen"), allocated with `allocate_batch_tensor`. `units[b]`, when given, is the
    vocabulary index of each local unit of sample b (see the module docstring)."""
    import torch

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not events:
        raise ValueError("cannot make tokens of an empty batch")
    counts = np.array([len(e) for e in events], dtype=np.int64)
    total = int(counts.sum())
    shape = (len(events), padded_length(int(counts.max()))) if mode == "pad8" else (total,)
    out = {"unit_index": allocate_batch_tensor(shape, torch.int64, zero=True),
           "timestamps": allocate_batch_tensor(shape, torch.float32, zero=True),
           "token_type": allocate_batch_tensor(shape, torch.int64, zero=True),
           "mask": allocate_batch_tensor(shape, torch.bool, zero=True)}
    arrays = {k: v.numpy() for k, v in out.items()}
    offsets = np.concatenate([[0], np.cumsum(counts)])
    for b, e in enumerate(events):
        where = (b, slice(0, len(e))) if mode == "pad8" else slice(offsets[b], offsets[b + 1])
        arrays["unit_index"][where] = e.units if units is None else units[b][e.units]
        arrays["timestamps"][where] = e.times.astype(np.float32)
        arrays["token_type"][where] = TOKEN_SPIKE
        arrays["mask"][where] = True
    if mode == "varlen":
        out["batch_index"] = allocate_batch_tensor((total,), torch.int64)
        out["batch_index"].numpy()[:] = np.repeat(np.arange(len(events)), counts)
        out["cu_seqlens"] = allocate_batch_tensor((len(events) + 1,), torch.int32)
        out["cu_seqlens"].numpy()[:] = offsets
        out["max_seqlen"] = int(counts.max())
    return out


@attrs.frozen(slots=True)
class SpikeTokens:
    """A collate function: `field`'s spike events as tokens (keys `<field>_unit_index`,
    `_timestamps`, `_token_type`, `_mask`, and for `mode="varlen"` `_batch_index`,
    `_cu_seqlens`, `_max_seqlen`; shapes and dtypes in `neurocodec.plugin.tokens`), every other
    field as `collate_webdataset` batches it: by its modality's collate rule when `fields` (the
    dataset's, e.g. `Dataset(path, decode=...).fields`) are given, else arrays stacked (padded
    with a mask where shapes differ) and the rest as lists.

    `unit_index` (a callable or a mapping from a session key to the vocabulary index of each
    of its units) is applied through each sample's `metadata["session"]`.

    Use it as `create_webdataset_dataloader(path, decode={"spikes": {"as": "events"}},
    collate_fn=SpikeTokens(mode="pad8"))`: it runs in the workers, batch by batch, so the
    loader's order and state are those of any other collate function.
    """

    mode: str = attrs.field(default="pad8", validator=attrs.validators.in_(MODES))
    field: str = "spikes"
    unit_index: UnitIndex | Mapping[str, Any] | None = None
    fields: tuple[FieldSpec, ...] | None = attrs.field(default=None, converter=attrs.converters.optional(tuple))
    registry: Registry | None = attrs.field(default=None, eq=False)

    def __call__(self, batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Collate `batch` (a list of sample dicts)."""
        if not batch:
            raise ValueError("cannot collate an empty batch")
        events = [self._events(sample) for sample in batch]
        units = self._vocabulary(batch, events) if self.unit_index is not None else None
        rest = [{k: v for k, v in sample.items() if k != self.field} for sample in batch]
        out = collate_fields(rest, self.fields, self.registry)
        for key, value in spike_tokens(events, self.mode, units).items():
            out[f"{self.field}_{key}"] = value
        return out

    def _events(self, sample: Mapping[str, Any]) -> SpikeEvents:
        value = sample.get(self.field)
        if isinstance(value, SpikeEvents):
            return value
        where = f"sample {sample.get(KEY, '?')!r}"
        if self.field not in sample:
            raise ValueError(f"SpikeTokens: {where} has no field {self.field!r} (it has {sorted(sample)}); "
                             f"pass field= the spike-events field to make tokens of")
        raise TypeError(f"SpikeTokens: field {self.field!r} of {where} is {type(value).__name__}, not "
                        f"SpikeEvents; read it as events: decode={{{self.field!r}: {{'as': 'events'}}}}")

    def _vocabulary(self, batch: Sequence[Mapping[str, Any]], events: list[SpikeEvents]) -> list[np.ndarray]:
        """Each sample's session units -> vocabulary indices, looked up once per session."""
        lookup = self.unit_index
        if isinstance(lookup, Mapping):
            lookup = lookup.__getitem__
        seen: dict[str, np.ndarray] = {}
        out = []
        for sample, e in zip(batch, events):
            where = f"sample {sample.get(KEY, '?')!r}"
            metadata = sample.get(METADATA_FIELD)
            session = metadata.get("session") if isinstance(metadata, Mapping) else None
            if not isinstance(session, str):
                raise ValueError(f"SpikeTokens: {where} has no metadata['session'] to look its units up with "
                                 f"unit_index")
            if session not in seen:
                seen[session] = _session_units(lookup, session, where)
            index = seen[session]
            if len(index) != e.unit_count:
                raise ValueError(f"SpikeTokens: unit_index gives {len(index)} units for session {session!r}; "
                                 f"field {self.field!r} of {where} has {e.unit_count}")
            out.append(index)
        return out


def _session_units(lookup: Callable[[str], Any], session: str, where: str) -> np.ndarray:
    try:
        index = np.asarray(lookup(session))
    except KeyError as exc:
        said = exc.args[0] if exc.args and exc.args[0] != session else ""  # a Vocabulary says what to do
        raise ValueError(f"SpikeTokens: unit_index has no entry for session {session!r} ({where})"
                         + (f": {said}" if said else "")) from None
    if index.ndim != 1 or (index.size and index.dtype.kind not in "iu"):
        raise ValueError(f"SpikeTokens: unit_index({session!r}) must be a 1-D integer array, got "
                         f"{index.dtype} of shape {index.shape}")
    if index.size and int(index.min()) < 0:
        raise ValueError(f"SpikeTokens: unit_index({session!r}) holds negative indices ({int(index.min())})")
    return index.astype(np.int64, copy=False)
