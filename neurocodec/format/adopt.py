"""Taking over a finished shard of another dataset unchanged: hard-linked, checked, committed.

When a shard of a source dataset is byte for byte the one a `ShardSequence` would write next
(same first sample, same shard number, so the same member names; see `ShardSequence.adopt`),
linking it costs nothing where copying would read, write, hash and fsync every byte again.
Before it is renamed into place it is checked as thoroughly as a copy would be: the index
file's size and SHA-256 against the source's manifest, and the whole shard file against the
bytes the writer would produce from that index: every header (the member names and sizes),
every payload (its CRC-32 from the index), every padding and the end-of-archive blocks, by
one CRC-32 over the file compared with the CRC-32 those bytes must have (combined from the
index's per-member CRCs). A copy checks each payload's CRC-32 and regenerates the rest, so
nothing is trusted here that a copy would not have checked. Without ISA-L's `crc32_combine`
the shard file's SHA-256 is checked instead.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Sequence

import attrs
import numpy as np

from neurocodec.errors import ShardError
from neurocodec.format import layout, tar
from neurocodec.format.checksum import crc32, crc32_combine
from neurocodec.format.fetch import open_regular
from neurocodec.format.manifest import ShardEntry
from neurocodec.fsutil import temp_path

READ_BLOCK = 1 << 20
_ZEROS = bytes(tar.BLOCK)


class AdoptedShard:
    """A source shard (file and index) hard-linked under temp names beside their final names in
    `directory`, then committed like a written shard (see the module).

    `rows` is the source's index as validated by its reader ((samples, members, 4): offset,
    stored size, decoded size, CRC-32) and `member_names(local)` the member names of sample
    `local` of the shard. Linking raises OSError where the filesystem cannot (another device,
    no hard links): the caller then copies the samples instead.
    """

    def __init__(self, directory: Path, source: Path, entry: ShardEntry, rows: np.ndarray,
                 member_names: Callable[[int], Sequence[str]], *, fsync: bool = True) -> None:
        # The index takes this writer's name (a source in the top-level layout names it `shard_X.idx`).
        self.entry = attrs.evolve(entry, index=layout.index_name(entry.name))
        self.rows, self.member_names, self.fsync = rows, member_names, fsync
        self.files = [(directory / name, temp_path(directory / name)) for name in (self.entry.index, entry.name)]
        try:
            for (final, tmp), origin in zip(self.files, (source / entry.index, source / entry.name)):
                tmp.unlink(missing_ok=True)
                os.link(origin, tmp)
        except BaseException:
            self.abort()
            raise

    def finish(self) -> None:
        """Nothing to finish: the shard is complete."""

    def commit(self) -> ShardEntry:
        """Check both files (ShardError naming the shard if either is not what the source's
        manifest and index describe), fsync them (a source written without fsync becomes
        durable too) and rename them into place, the index first; return the source's entry
        (the index under this writer's name)."""
        (index_final, index_tmp), (shard_final, shard_tmp) = self.files
        entry = self.entry
        if _read(index_tmp, index_final.name, hashlib.sha256()) != (entry.index_bytes, entry.index_sha256):
            raise ShardError("the index taken over from another dataset does not match its manifest's size "
                             "and SHA-256 (corrupted)", shard=entry.name)
        if crc32_combine is None:
            expected, found = (entry.bytes, entry.sha256), _read(shard_tmp, shard_final.name, hashlib.sha256())
        else:
            expected, found = (entry.bytes, self.expected_crc()), _read(shard_tmp, shard_final.name, None)
        if found != expected:
            raise ShardError("the shard taken over from another dataset does not hold the bytes its index "
                             "and manifest describe (corrupted)", shard=entry.name)
        for _, tmp in self.files:
            if self.fsync:
                _fsync(tmp)
        for final, tmp in self.files:
            os.replace(tmp, final)
        return entry

    def expected_crc(self) -> int:
        """The CRC-32 of the shard file the writer would produce from `rows` and the names."""
        value = 0
        for local, sample in enumerate(self.rows.tolist()):
            for name, (_, stored, _, payload_crc) in zip(self.member_names(local), sample):
                value = crc32(tar.build_header(name, stored), value)
                value = crc32_combine(value, payload_crc, stored)
                pad = tar.padding(stored)
                if pad:
                    value = crc32(_ZEROS[:pad], value)
        return crc32(tar.END_OF_ARCHIVE, value)

    def abort(self) -> None:
        """Remove the links not yet renamed into place."""
        for _, tmp in self.files:
            tmp.unlink(missing_ok=True)


def _read(path: Path, name: str, digest) -> tuple[int, int | str]:
    """The size of the regular file `path` and its SHA-256 (hex; with a hashlib `digest`) or
    its CRC-32 (`digest` None), read with `pread`s through one reused buffer (never mapped, so a
    file changed meanwhile cannot signal)."""
    try:
        fd, _ = open_regular(path)
    except OSError as exc:
        raise ShardError(f"cannot read the file to take over: {exc.strerror or exc}", shard=name) from None
    view, total, value = memoryview(bytearray(READ_BLOCK)), 0, 0
    with os.fdopen(fd, "rb", buffering=0) as f:
        while n := f.readinto(view):
            if digest is None:
                value = crc32(view[:n], value)
            else:
                digest.update(view[:n])
            total += n
    return total, value if digest is None else digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
