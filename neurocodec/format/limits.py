"""Size limits a reader enforces before it trusts a number from a dataset.

`max_member_bytes` is the per-member decoded-size ceiling: no member may decode to more bytes,
whatever the manifest declares. A hostile manifest can honestly declare a 900 MiB member behind
a 28 KB zstd frame; the ceiling refuses it (at manifest parse, at index validation and again in
the decompressor) before anything is allocated for it. The default, 256 MiB, is far above what
one sample's field holds in practice (an hour of 384-channel LFP at 1 kHz in float32 is 5.5 GB
and is cut into many samples; a 3T fMRI run of 64x64x40x300 float32 is 188 MiB) and far below a
training machine's memory, where a DataLoader holds `batch_size x prefetch x workers` samples
at once. Datasets with larger members raise it: the `max_member_bytes` argument of `Dataset`
and the loaders, or the environment variable NEUROCODEC_MAX_MEMBER_BYTES (read when a dataset
is opened, so DataLoader workers and subprocesses inherit it).

The ceiling bounds each shard's index file too (it is read whole). The other helpers give the
smallest shard and the exact index a manifest's sample counts imply, so that counts are checked
against sizes before anything is sized by them.
"""

from __future__ import annotations

import functools
import os
import re

import numpy as np

from neurocodec import npy
from neurocodec.format import tar

DEFAULT_MAX_MEMBER_BYTES = 256 << 20
"""The per-member decoded-size ceiling when none is set (256 MiB)."""
ENV_MAX_MEMBER_BYTES = "NEUROCODEC_MAX_MEMBER_BYTES"
"""Environment variable overriding DEFAULT_MAX_MEMBER_BYTES: bytes, optionally with a binary
suffix (`512MiB`, `2GiB`, `1048576`)."""
LARGEST_CEILING = 1 << 62
"""The largest ceiling accepted: sizes below it stay exact in int64 arithmetic."""

_SUFFIXES = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
             "g": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40}
_SIZE = re.compile(r"\s*([0-9][0-9_]{0,20})\s*([A-Za-z]{0,3})\s*")


def max_member_bytes(value: int | None = None) -> int:
    """The per-member decoded-size ceiling: `value` when given, else the environment variable
    NEUROCODEC_MAX_MEMBER_BYTES, else DEFAULT_MAX_MEMBER_BYTES. ValueError for a value that is
    not a whole number of bytes between 1 and 2**62."""
    if value is None:
        text = os.environ.get(ENV_MAX_MEMBER_BYTES)
        return DEFAULT_MAX_MEMBER_BYTES if text is None or not text.strip() else _parse_env(text)
    if type(value) is not int and not isinstance(value, np.integer) or not 1 <= value <= LARGEST_CEILING:
        raise ValueError(f"max_member_bytes must be an integer number of bytes from 1 to 2**62, got {value!r}")
    return int(value)


@functools.lru_cache(maxsize=8)
def _parse_env(text: str) -> int:
    match = _SIZE.fullmatch(text)
    factor = _SUFFIXES.get(match[2].lower()) if match else None
    value = int(match[1]) * factor if factor is not None else 0
    if not 1 <= value <= LARGEST_CEILING:
        raise ValueError(f"{ENV_MAX_MEMBER_BYTES}={text!r} is not a size in bytes from 1 to 2**62 "
                         "(a number, optionally followed by KiB, MiB, GiB or TiB)")
    return value


def min_shard_bytes(samples: int, members: int) -> int:
    """The smallest shard file that holds `samples` samples of `members` members each: a
    512-byte header per member (payloads may be empty) and the 1024-byte end of archive."""
    return samples * members * tar.BLOCK + 2 * tar.BLOCK


@functools.lru_cache(maxsize=64)
def index_file_bytes(samples: int, members: int) -> int:
    """The exact size of the index of a shard of `samples` samples with `members` members:
    the NPY header of a (samples, members, 4) `<u8` array plus 32 bytes per member."""
    return len(npy.header(np.dtype("<u8"), (samples, members, 4))) + samples * members * 32
