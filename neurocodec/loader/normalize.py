"""`normalize=` of the loaders: find the statistics that belong to the dataset and split read,
check that they are current, and put `neurocodec.transforms.Normalize` before the user's
transform (docs/stats.md).

A loader with `split="<name>/<part>"` (or `split="<part>"`, of the split named "default") scales
with `<dataset>/stats/<name>.json`, which must have been made from that split's first part (its
training part), for the split and the manifest as they are now; a loader without `split=` with
`stats/all.json`, made from every sample. Anything else would scale with numbers that describe
other data (or held-out data): a DatasetError saying which command makes the right ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import attrs
import numpy as np

from neurocodec.dataset.decode import decode_plan
from neurocodec.dataset.splits import Split, parse_split_arg, read_split
from neurocodec.dataset.stats import Stats, manifest_sha256, read_stats, stats_path
from neurocodec.dataset.versions import version_files
from neurocodec.errors import DatasetError
from neurocodec.format.home import manifest_label
from neurocodec.format.manifest import FieldSpec
from neurocodec.loader.transform import Transform
from neurocodec.plugin.manager import default_registry
from neurocodec.storage.location import is_remote
from neurocodec.transforms import NORMALIZE_MODES, Compose, Normalize


def normalizing(path: Any, normalize: str | None, split: str | None, manifest: Any, *,
                decode: Mapping[str, Mapping[str, Any]] | None, registry: Any,
                transform: Transform | None) -> tuple[Stats | None, Transform | None]:
    """(the statistics, the transform to run: `Normalize` then `transform`) for a loader over the
    dataset at `path` (its `manifest`) reading `split` with `normalize` (None: (None, transform)).
    ValueError for a bad `normalize`, a URL dataset or decode options the statistics do not
    describe; DatasetError for statistics that are missing, bad or stale."""
    if normalize is None:
        return None, transform
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be None or one of {NORMALIZE_MODES}, got {normalize!r}")
    if is_remote(path):
        raise ValueError("normalize= needs a local dataset (its stats/ directory is read from disk)")
    stats = current_stats(Path(path), split, manifest.total_samples, manifest.version)
    check_decode(stats, manifest, decode, registry, manifest_label(path))
    scale = Normalize(stats, normalize)
    return stats, (scale if transform is None else Compose((scale, transform)))


def current_stats(path: Path, split: str | None, total_samples: int, version: int = 1) -> Stats:
    """The statistics a loader reading `split` of `version` of the dataset at `path` scales with
    (see the module documentation), checked against that version's split and manifest."""
    named = parse_split_arg(split)
    chosen = None if named is None else read_split(path, named[0], total_samples, version)
    first = None if chosen is None else chosen.rule.names[0]
    directory = version_files(path, version)  # an earlier version keeps its statistics in versions/<n>/
    target = stats_path(directory, None if chosen is None else chosen.name)
    what = "every sample" if chosen is None else f"part {first!r} of split {chosen.name!r}"
    if not target.exists():
        raise DatasetError(f"{target}: normalize= needs the statistics of {what}, and there are none: make them "
                           f"with `{_command(path, chosen, False)}` (or neurocodec.compute_stats)")
    stats = read_stats(directory, None if chosen is None else chosen.name)
    problem = _mismatch(stats, chosen, first, manifest_sha256(directory))
    if problem:
        raise DatasetError(f"{target}: {problem}; normalize= scales with the statistics of {what} as it is now: "
                           f"make them again with `{_command(path, chosen, True)}`")
    return stats


def _mismatch(stats: Stats, chosen: Split | None, first: str | None, sha: str) -> str | None:
    """What makes `stats` the wrong statistics for the loader, if anything."""
    if chosen is None:
        if stats.split is not None:
            return f"these statistics were made from split {stats.split!r}, not from every sample"
    elif stats.split != chosen.name or stats.part != first:
        made = "every sample" if stats.split is None else f"part {stats.part!r} of split {stats.split!r}"
        return f"these statistics were made from {made}, not from the first (training) part {first!r}"
    if stats.manifest_sha256 != sha:  # (an append changes the split's assignment too: say why)
        return "these statistics were made for another state of the dataset (its manifest changed since)"
    if chosen is not None and stats.split_fingerprint != chosen.fingerprint(first):
        return f"these statistics were made for another assignment of split {chosen.name!r} (it changed since)"
    return None


def _command(path: Path, chosen: Split | None, overwrite: bool) -> str:
    part = "--all" if chosen is None else (f"--split {chosen.rule.names[0]}" if chosen.name == "default"
                                           else f"--split {chosen.name}/{chosen.rule.names[0]}")
    return f"neurocodec stats {path} {part}" + (" --overwrite" if overwrite else "")


def check_decode(stats: Stats, manifest: Any, decode: Mapping[str, Mapping[str, Any]] | None, registry: Any,
                 source: str) -> None:
    """ValueError when `decode` options make a field with statistics another array than the
    statistics describe (re-binned spikes, raw integers): they would scale it wrongly. Options
    that make it something other than an array (spike events) leave it unscaled, and are fine."""
    if not decode:
        return
    registry = registry or default_registry()
    default = {f.name: f for f in decode_plan(manifest.fields, registry, source).fields}
    chosen = {f.name: f for f in decode_plan(manifest.fields, registry, source, decode).fields}
    for name in stats.fields:
        before, after = default.get(name), chosen.get(name)
        if before is None or after is None or after.kind != "array":
            continue
        if (after.dtype, after.shape) != (before.dtype, before.shape):
            raise ValueError(f"decode={{{name!r}: ...}} makes field {name!r} {after.dtype} {after.shape} instead of "
                             f"{before.dtype} {before.shape}, as its statistics describe it: normalize= would scale it "
                             "wrongly; drop the decode option, or scale the field yourself")


def scaled_fields(fields: Sequence[FieldSpec], stats: Sequence[Stats | None]) -> tuple[FieldSpec, ...]:
    """The fields as batches hold them once scaled: float32 where any of `stats` describes an
    array field (so a mix fills the field's absence with float32 zeros, and batches are sized
    for float32 values)."""
    described = {name for s in stats if s is not None for name in s.fields}
    out = []
    for field in fields:
        if field.name in described and field.kind == "array" and field.dtype is not None:
            size = np.dtype(field.dtype).itemsize
            field = attrs.evolve(field, dtype="<f4", max_value_bytes=-(-field.value_bound * 4 // size))
        out.append(field)
    return tuple(out)
