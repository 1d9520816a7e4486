"""Writing shard tables (`neurocodec.format.shard_table`): which shards a table can hold, their
bytes."""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np

from neurocodec.format import layout
from neurocodec.format.shard_table import (
    BLOCK, HEADER, HEX64, MAGIC, MAX_FIRST_NUMBER, RECORD, SHARD_NUMBER, TABLE_VERSION, ExtendedShards, TableShards,
    shard_columns,
)


def first_number(shards: Sequence[Any]) -> int | None:
    """The number of the first of `shards` if they can make a table (named `shard_name(first
    + i)`, hex checksums), else None: they then stay rows of the JSON manifest."""
    if isinstance(shards, TableShards):
        return shards.first_number
    if isinstance(shards, ExtendedShards):
        first = shards.table.first_number
        return first if _named_from(shards.tail, first + len(shards.table)) else None
    if not shards:
        return None
    match = SHARD_NUMBER.fullmatch(shards[0].name)
    first = int(match[1]) if match else -1
    return first if _named_from(shards, first) else None


def _named_from(entries: Sequence[Any], first: int) -> bool:
    """True if entry i is named `shard_name(first + i)` (either index name) with hex checksums."""
    if not 0 <= first or first + len(entries) > MAX_FIRST_NUMBER:
        return False
    for i, entry in enumerate(entries):
        name = layout.shard_name(first + i)
        if entry.name != name or entry.index not in (layout.index_name(name), layout.legacy_index_name(name)) \
                or not HEX64.fullmatch(entry.sha256) or not HEX64.fullmatch(entry.index_sha256):
            return False
    return True


def encode_table(shards: Sequence[Any], first: int) -> tuple[bytes, str]:
    """The table of `shards` (named from `first`, see `first_number`) and its head's SHA-256:
    a table's records copied as they are (block by block, each checked), entries encoded."""
    samples, starts = shard_columns(shards)
    if isinstance(shards, TableShards) and shards.first_number == first:
        return encode_columns(samples, starts, b"".join(shards.records()), first)
    if isinstance(shards, ExtendedShards) and shards.table.first_number == first:
        return encode_columns(samples, starts, b"".join([*shards.table.records(), _records(shards.tail)]), first)
    return encode_columns(samples, starts, _records(shards), first)


def _records(shards: Sequence[Any]) -> bytes:
    """The records (`RECORD`) of these entries."""
    count = len(shards)
    rows = np.zeros(count, dtype=RECORD)
    if count:
        rows["bytes"] = np.fromiter((s.bytes for s in shards), dtype=np.uint64, count=count)
        rows["index_bytes"] = np.fromiter((s.index_bytes for s in shards), dtype=np.uint64, count=count)
        rows["legacy_index"] = np.fromiter((not s.index.startswith(".") for s in shards), dtype=np.uint64,
                                           count=count)
        rows["sha256"] = np.frombuffer(bytes.fromhex("".join(s.sha256 for s in shards)), np.uint8).reshape(-1, 32)
        rows["index_sha256"] = np.frombuffer(bytes.fromhex("".join(s.index_sha256 for s in shards)),
                                             np.uint8).reshape(-1, 32)
    return rows.tobytes()


def encode_columns(samples: np.ndarray, starts: np.ndarray, records: bytes, first: int) -> tuple[bytes, str]:
    """The table of these columns and `records` (`RECORD` rows), and its head's SHA-256."""
    count = len(samples)
    size = RECORD.itemsize
    digests = b"".join(hashlib.sha256(records[k: k + BLOCK * size]).digest()
                       for k in range(0, len(records), BLOCK * size))
    head = b"".join([HEADER.pack(MAGIC, TABLE_VERSION, size, count, BLOCK, first),
                     samples.astype("<u8").tobytes(), starts.astype("<u8").tobytes(), digests])
    return head + records, hashlib.sha256(head).hexdigest()
