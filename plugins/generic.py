"""The generic fallback: the core codecs, and storage for any field no modality claims.

Registers the codecs every dataset uses (`npy`, `json`, `text`, `bytes`, and `ndarray` with its
array filters) and four fallback
modalities, chosen by value type for a field name no plugin registers: numeric arrays (and
tensors) as `.npy` keeping their dtype, str as `.txt`, bytes as `.bin`, and any other JSON value
as `.json`. So `write_sample` accepts every modality name the user guide shows.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from neurocodec.plugin import (
    BUILTIN_FILTERS, ArrayCodec, ArrayPolicy, BytesCodec, JsonCodec, ModalitySpec, NpyCodec, ScaledIntCodec, TextCodec,
    collate_list, hookimpl, is_array,
)


def _is_json(value: Any) -> bool:
    return isinstance(value, (dict, list, tuple, int, float, bool, type(None))) or isinstance(value, np.generic)


def _identity(value: Any, options: Mapping[str, Any]) -> Any:
    return value


def _text(value: Any, options: Mapping[str, Any]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected str, got {type(value).__name__}")
    return value


def _bytes(value: Any, options: Mapping[str, Any]) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(value).__name__}")
    return bytes(value)


@hookimpl
def neurocodec_register_codecs(register) -> None:
    """The core codecs (scaled-int serves every continuous modality), and the built-in array
    filters (delta, shuffle, zstd, lz4, zlib)."""
    for codec in (NpyCodec, JsonCodec, TextCodec, BytesCodec, ArrayCodec, ScaledIntCodec):
        register(codec)
    for filt in BUILTIN_FILTERS.values():
        register(filt)


@hookimpl
def neurocodec_register_modalities(register) -> None:
    """Fallbacks by value type, tried in this order."""
    register(ModalitySpec(
        name="array", codec={"id": "npy", "pack_integers": False}, prepare=ArrayPolicy(),
        description="any numeric array or tensor, stored with its dtype", fallback=True,
        accepts=is_array,
    ))
    register(ModalitySpec(
        name="text", codec={"id": "text"}, prepare=_text, collate=collate_list,
        description="a str, stored as UTF-8", fallback=True, accepts=lambda v: isinstance(v, str),
    ))
    register(ModalitySpec(
        name="bytes", codec={"id": "bytes"}, prepare=_bytes, collate=collate_list,
        description="raw bytes, stored as they are", fallback=True,
        accepts=lambda v: isinstance(v, (bytes, bytearray, memoryview)),
    ))
    register(ModalitySpec(
        name="json", codec={"id": "json"}, prepare=_identity, collate=collate_list,
        description="any other JSON value (dict, list, number, bool, None)", fallback=True,
        accepts=_is_json,
    ))
