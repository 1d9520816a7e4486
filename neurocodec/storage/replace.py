"""Names for replacing a dataset atomically: which files are a writer's own, and the stand-in
shard names under which a new dataset is published beside the old one.

A dataset's shards are named `shard_000000.tar`, ... whichever dataset it is, so the new
dataset's shards cannot take their final names while the old manifest still refers to them.
They are first put in place under stand-in names (`shard_1000000000.tar`, ..., above every
shard number present) and a manifest naming those is renamed into place: that single atomic
rename is the switch from the old dataset to the new one. Then the final names are made (hard
links, or copies), the final manifest replaces the stand-in one (the same dataset under other
names), and the stand-ins and old files are removed. At every moment the manifest in place
names complete files only: a reader finds the old dataset or the new one, never a mix, never
nothing.
"""

from __future__ import annotations

import re
from typing import Iterable

import attrs

from neurocodec.format import layout
from neurocodec.format.manifest import Manifest
from neurocodec.format.shard_table import is_table_name
from neurocodec.fsutil import is_temp_name

# Where a local writer writes the new dataset while the old one stays in place.
STAGING = ".neurocodec-staging"
# Stand-in numbers start at a multiple of this, above every shard number present: a dataset has
# fewer shards than samples (at most layout.MAX_SAMPLES), so they never meet the final names.
STAND_IN_STEP = layout.MAX_SAMPLES + 1
_NUMBERED = re.compile(r"\.?shard_([0-9]{1,30})\.(?:tar|idx)")


def is_dataset_file(name: str) -> bool:
    """True for the names a writer creates at the top of a dataset directory: shards, indexes
    (of either layout), hidden temp files, the manifest of the top-level layout and its shard
    table (the lock file, the staging directory and `.neurocodec/` are not)."""
    return (name == layout.MANIFEST or layout.is_shard_name(name) or is_table_name(name)
            or layout.is_index_name(name) or is_temp_name(name))


def stand_in_base(names: Iterable[str]) -> int:
    """The first stand-in shard number for a directory holding `names`: a multiple of
    STAND_IN_STEP above every shard or index number among them."""
    top = max((int(m[1]) for m in map(_NUMBERED.fullmatch, names) if m), default=-1)
    return STAND_IN_STEP * (top // STAND_IN_STEP + 1)


def stand_in_manifest(manifest: Manifest, base: int) -> Manifest:
    """`manifest` with shard `i` (and its index) named after number `base + i`."""
    shards = []
    for i, entry in enumerate(manifest.shards):
        name = layout.shard_name(base + i)
        shards.append(attrs.evolve(entry, name=name, index=layout.index_name(name)))
    return attrs.evolve(manifest, shards=tuple(shards))


def listed_names(manifest: Manifest) -> set[str]:
    """The files at the top of the dataset that a manifest refers to: its shards and indexes
    (the manifest itself is in `.neurocodec/`; one at the top is an older layout's)."""
    return {*(s.name for s in manifest.shards), *(s.index for s in manifest.shards)}
