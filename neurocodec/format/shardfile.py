"""Writing one shard: tar members streamed to a temp file, index and checksums kept on the way.

The shard appears under its final name only when complete: members go to a hidden temp file,
the index is written atomically, and the tar file is renamed into place last.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np

from neurocodec.format import index as shard_index
from neurocodec.format.checksum import crc32
from neurocodec.format import layout, tar
from neurocodec.format.manifest import ShardEntry
from neurocodec.fsutil import atomic_write_bytes, temp_path


class ShardFileWriter:
    """Streams samples into one shard file and produces its index and manifest entry."""

    def __init__(self, directory: Path, number: int, first_sample: int, members: int,
                 *, fsync: bool = True) -> None:
        self.name = layout.shard_name(number)
        self.final = directory / self.name
        self.tmp = temp_path(self.final)
        self.first_sample = first_sample
        self.members = members
        self.fsync = fsync
        self.rows: list[list[tuple[int, int, int, int]]] = []
        self.offset = 0
        self.digest = hashlib.sha256()
        self._file: BinaryIO = open(self.tmp, "wb", buffering=1 << 20)

    @property
    def samples(self) -> int:
        """Samples written so far."""
        return len(self.rows)

    def _write(self, data: bytes | memoryview) -> None:
        self._file.write(data)
        self.digest.update(data)
        self.offset += len(data)

    def add_sample(self, names: Sequence[str], payloads: Sequence[bytes], raw_sizes: Sequence[int]) -> None:
        """Append one sample: its member names, stored payloads, and decoded sizes, in field order."""
        row = []
        for name, payload, raw in zip(names, payloads, raw_sizes):
            self._write(tar.build_header(name, len(payload)))
            row.append((self.offset, len(payload), raw, crc32(payload)))
            self._write(payload)
            pad = tar.padding(len(payload))
            if pad:
                self._write(b"\0" * pad)
        self.rows.append(row)

    def close(self) -> ShardEntry:
        """Finish the archive, write the index, rename both into place; return the entry."""
        self._write(tar.END_OF_ARCHIVE)
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        self._file.close()
        index_bytes = shard_index.encode(np.array(self.rows, dtype=np.uint64).reshape(-1, self.members, 4))
        index_path = self.final.with_name(layout.index_name(self.name))
        atomic_write_bytes(index_path, index_bytes, fsync=self.fsync)
        os.replace(self.tmp, self.final)
        return ShardEntry(
            name=self.name, index=index_path.name, samples=self.samples, first_sample=self.first_sample,
            bytes=self.offset, sha256=self.digest.hexdigest(), index_bytes=len(index_bytes),
            index_sha256=hashlib.sha256(index_bytes).hexdigest(),
        )

    def abort(self) -> None:
        """Drop the unfinished shard."""
        try:
            self._file.close()
        finally:
            self.tmp.unlink(missing_ok=True)
