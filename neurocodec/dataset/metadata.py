"""Every sample's metadata, read alone: the metadata members through the shard index, each
checked against its CRC-32, without reading the samples' other members (long signals)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from neurocodec.dataset.reader import Dataset
from neurocodec.errors import ShardError
from neurocodec.format import layout
from neurocodec.format.checksum import crc32
from neurocodec.format.compression import decompress
from neurocodec.format.fetch import ShardFile
from neurocodec.plugin.registry import Registry


def sample_metadata(part_dir: str | Path, registry: Registry | None = None) -> Iterator[dict[str, Any]]:
    """Every sample's metadata in a local dataset (or a converter's part), in sample order,
    reading only the metadata members (through the shard index, each payload checked against its
    CRC-32): the long signals are not read. `registry`: the plugins whose codecs the dataset
    uses (default the installed ones)."""
    with Dataset(part_dir, registry=registry) as ds:
        column = [f.name for f in ds.manifest.fields].index(layout.METADATA_FIELD)
        for number, entry in enumerate(ds.shards):
            rows = ds.shard(number).rows[:, column, :].tolist()  # the index, validated on opening
            shard = ShardFile(ds.path / entry.name, entry.name)
            try:
                for offset, stored, raw, crc in rows:
                    payload = shard.read(offset, stored)
                    if crc32(payload) != crc:
                        raise ShardError("metadata CRC-32 mismatch (corrupted)", shard=entry.name)
                    if ds.manifest.compression != "none":
                        payload = bytes(decompress(ds.manifest.compression, payload, raw))
                    yield json.loads(payload)
            finally:
                shard.close()
