"""Names in a neurocodec dataset: shards, indexes, members, keys and fields.

A dataset directory holds `shard_000000.tar`, `shard_000001.tar`, ..., each with a hidden index
`.shard_000000.idx` beside it, and the hidden directory `.neurocodec/` with the manifest
`dataset_metadata.json` (written last) and the files made for the dataset (splits,
statistics, earlier versions, a conversion's report). Only the shards are visible, so tools
that read every file of a directory as a WebDataset shard (Hugging Face `datasets`, Ray Data)
read the dataset when pointed at it. Datasets written before this layout keep the manifest,
`shard_000000.idx` and those files at the top; they are read as they are
(`neurocodec.format.home`). Inside a shard every sample is a run of consecutive members that share a key:
`sample_000000001.spikes.npy`, `sample_000000001.behavior.npy`, `sample_000000001.metadata.json`.
Keys are numbered from 1 across the whole dataset, as in the user guide.
"""

from __future__ import annotations

import re

FORMAT_NAME = "neurocodec-shards"
FORMAT_VERSION = 3
"""The newest format version this package reads and writes (docs/format.md, section 12).
Version 1: every field stored with the codecs npy, json, text or bytes. Version 2 adds the
neural codecs and the field entry `max_value_bytes`; a dataset that uses neither is still
written as version 1, so readers that know only version 1 keep reading it. Version 3 adds the
shard table (`neurocodec.format.shard_table`), written only for datasets of more shards than
its threshold (10,000): smaller ones keep their shard rows in the JSON and their version."""
V1_CODECS = frozenset({"npy", "json", "text", "bytes"})
MANIFEST = "dataset_metadata.json"
HOME = ".neurocodec"
"""The hidden directory that holds the manifest and the files made for a dataset; hidden, so
that readers which take every visible file for a shard skip it."""
MANIFEST_PATH = f"{HOME}/{MANIFEST}"
"""The manifest's path in a dataset written today (a URL's object name too)."""
VERSIONS = "versions"
"""Where earlier versions of an appended dataset keep their manifests (and splits, statistics)."""
METADATA_FIELD = "metadata"
KEY_DIGITS = 9
MAX_SAMPLES = 10**KEY_DIGITS - 1
MAX_FIELD_NAME = 48
_FIELD = re.compile(r"[a-z][a-z0-9_-]{0,%d}" % (MAX_FIELD_NAME - 1))
_SHARD = re.compile(r"shard_[0-9]{6,}\.tar")
_INDEX = re.compile(r"\.?shard_[0-9]{6,}\.idx")


def shard_name(number: int) -> str:
    """File name of shard `number` (0-based)."""
    return f"shard_{number:06d}.tar"


def index_name(shard: str) -> str:
    """File name of the index that belongs to shard file `shard`: hidden (`.shard_000000.idx`),
    so that readers which take every visible file for a shard skip it."""
    return "." + legacy_index_name(shard)


def legacy_index_name(shard: str) -> str:
    """The index name of shard `shard` in datasets written before the hidden layout
    (`shard_000000.idx`); readers accept it, writers no longer use it."""
    return shard[: -len(".tar")] + ".idx"


def is_index_name(name: str) -> bool:
    """True for an index file name of either layout (`.shard_000000.idx`, `shard_000000.idx`)."""
    return _INDEX.fullmatch(name) is not None


def is_shard_name(name: str) -> bool:
    """True if `name` is a shard file name this format writes."""
    return _SHARD.fullmatch(name) is not None


def sample_key(global_index: int) -> str:
    """Key of the sample at 0-based position `global_index` in the dataset (keys start at 1)."""
    return "sample_" + str(global_index + 1).zfill(KEY_DIGITS)  # twice as fast as an f-string


def version_dir(number: int) -> str:
    """The directory, relative to the dataset, that keeps version `number`: `versions/<number>`."""
    return f"{VERSIONS}/{number}"


def member_name(key: str, field: str, extension: str) -> str:
    """Tar member name of one field of one sample: `<key>.<field>.<extension>`."""
    return f"{key}.{field}.{extension}"


def field_name_problem(name: object) -> str | None:
    """Why `name` cannot be a field (modality) name, or None if it can.

    Field names become the middle part of member names; a dot would make webdataset, Ray Data
    and Hugging Face datasets split the key there and silently merge samples.
    """
    if not isinstance(name, str):
        return f"field names must be str, got {type(name).__name__}"
    if "." in name:
        return f"field name {name!r} contains a dot; readers split member names at the first dot"
    if name == METADATA_FIELD:
        return f"field name {name!r} is reserved for the metadata argument of write_sample"
    if not _FIELD.fullmatch(name):
        return (f"field name {name!r} must start with a lowercase letter and hold only lowercase "
                f"letters, digits, '_' or '-' (at most {MAX_FIELD_NAME} characters); webdataset "
                "lowercases extensions, so 'LFP' and 'lfp' would collide")
    return None
