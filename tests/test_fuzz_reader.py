"""Property-based fuzzing of the reader on mutated valid shards (hypothesis).

A small valid dataset per compression is mutated at random: bit flips, truncations, inserted,
deleted and overwritten bytes, in a shard, in an index or in the manifest, with and without the
manifest's checksums (size and SHA-256 of the shard or index) fixed up afterwards; positions are
drawn uniformly or near the places that matter (member headers, their size and type fields,
payload starts). Structure-aware variants replace manifest values with other JSON values and
index entries with other integers (the index kept valid NPY, its SHA-256 fixed). The property:
opening the dataset and reading every sample, then
`verify_all()`, either gives back exactly the original values or raises neurocodec's typed
errors (ShardError, DatasetError; UnknownCodecError too when the manifest is the target) —
never another exception, never a hang (hypothesis deadline and pytest-timeout).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import hostile as h
from neurocodec import Dataset, WebDatasetWriter
from neurocodec.errors import DatasetError, ShardError, UnknownCodecError

pytestmark = pytest.mark.timeout(240)

COMPRESSIONS = ("none", "zstd", "gz", "bz2", "xz")
SHARD_ERRORS = (ShardError, DatasetError)
MANIFEST_ERRORS = (ShardError, DatasetError, UnknownCodecError)
FUZZ = settings(max_examples=200, deadline=timedelta(seconds=5),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def make_samples() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Three small samples with an array, a packed-integer array and a string each."""
    rng = np.random.default_rng(11)
    return [
        ({"lfp": rng.standard_normal((2, 8)).astype("<f4"), "spikes": rng.poisson(2, (3, 5)),
          "note": f"trial {i} \N{GREEK SMALL LETTER MU}"}, {"trial": i, "ok": bool(i % 2)})
        for i in range(3)
    ]


class Base:
    """A valid dataset, its files' bytes, and the positions worth aiming at in each file."""

    def __init__(self, root: Path, files: dict[str, bytes], hot: dict[str, list[int]]) -> None:
        self.root, self.files, self.hot = root, files, hot

    def __repr__(self) -> str:  # short: hypothesis prints the fixture in falsifying examples
        return f"Base({self.root.name})"


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Base]:
    out = {}
    for compression in COMPRESSIONS:
        root = tmp_path_factory.mktemp("fuzz") / compression
        with WebDatasetWriter(root, shard_size=2, compression=compression, fsync=False) as w:
            for fields, metadata in make_samples():
                w.write_sample(fields, metadata)
        files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        hot: dict[str, list[int]] = {name: [] for name in files}
        for shard in (0, 1):
            for offset, stored, _raw, _crc in h.read_index(root, shard).reshape(-1, 4).tolist():
                start = offset - h.BLOCK
                hot[f"shard_{shard:06d}.tar"] += [start + k for k in (0, 20, 100, 124, 130, 135, 148, 156, 257)]
                hot[f"shard_{shard:06d}.tar"] += list(range(offset, offset + stored))
                hot[f"shard_{shard:06d}.tar"] += [offset + stored - 1, offset + stored]
            idx = files[f".shard_{shard:06d}.idx"]
            hot[f".shard_{shard:06d}.idx"] = list(range(0, 80)) + list(range(len(idx) - 64, len(idx)))
        text = files[h.MANIFEST].decode()
        hot[h.MANIFEST] = [text.index(key) + len(key) + 3 for key in (
            '"samples"', '"bytes"', '"dtype"', '"shape"', '"id"', '"name"', '"kind"', '"extension"',
            '"compression"', '"first_sample"', '"total_samples"', '"format_version"', '"index"')]
        out[compression] = Base(root, files, hot)
    return out


OPS = ("flip", "truncate", "insert", "delete", "overwrite")


def mutate(draw, data: bytes, hot: list[int]) -> bytes:
    """Apply one random mutation to `data`, at a uniform or a hot position."""
    op = draw(st.sampled_from(OPS))
    size = len(data)
    spots = [p for p in hot if p < size]
    pos = draw(st.one_of(st.integers(0, max(size - 1, 0)), st.sampled_from(spots or [0])))
    if op == "flip":
        if not size:
            return data
        out = bytearray(data)
        out[pos] ^= 1 << draw(st.integers(0, 7))
        return bytes(out)
    if op == "truncate":
        return data[:pos]
    if op == "insert":
        return data[:pos] + draw(st.binary(min_size=1, max_size=64)) + data[pos:]
    if op == "delete":
        return data[:pos] + data[pos + draw(st.integers(1, 600)):]
    chunk = draw(st.one_of(st.binary(min_size=1, max_size=16), st.just(b"\0" * 8), st.just(b"7777777")))
    return data[:pos] + chunk + data[pos + len(chunk):]


def write_mutant(base: Base, where: Path, target: str, mutated: bytes, fix: bool) -> Path:
    root = Path(shutil.copytree(base.root, where))
    (root / target).write_bytes(mutated)
    if fix and target != h.MANIFEST:
        shard = int(target.lstrip(".")[6:12])
        (h.fix_index_entry if target.endswith(".idx") else h.fix_shard_entry)(root, shard)
    return root


def same(got: dict[str, Any], want: tuple[dict[str, Any], dict[str, Any]]) -> bool:
    """Bit-exact equality of a read sample with the original."""
    fields, metadata = want
    if set(got) != {"__key__", "metadata", *fields} or got["metadata"] != metadata:
        return False
    for name, value in fields.items():
        if isinstance(value, np.ndarray):
            if got[name].dtype != value.dtype or got[name].shape != value.shape:
                return False
            if got[name].tobytes() != value.tobytes():
                return False
        elif got[name] != value:
            return False
    return True


def read_everything(root: Path, allowed: tuple[type, ...], verify: str = "crc") -> list[Any]:
    """Open, read each sample, then verify_all; return per-sample values or the typed errors."""
    outcomes: list[Any] = []
    try:
        with Dataset(root, verify=verify) as ds:
            for i in range(len(ds)):
                try:
                    outcomes.append(ds[i])
                except allowed as exc:
                    outcomes.append(exc)
            try:
                ds.verify_all()
                outcomes.append("verified")
            except allowed as exc:
                outcomes.append(exc)
    except allowed as exc:
        outcomes.append(exc)
    return outcomes


def record(outcomes: list[Any]) -> list[Any]:
    """Label the example for `--hypothesis-show-statistics` (which checks the fuzzing reaches)."""
    read = sum(isinstance(o, dict) for o in outcomes)
    event(f"{read} samples read, {'verified' if outcomes and outcomes[-1] == 'verified' else 'not verified'}")
    for o in outcomes:
        if isinstance(o, Exception):
            event(f"{type(o).__name__}: {str(o).split(': ', 1)[-1][:40]}")
    return outcomes


def check_exact(outcomes: list[Any], originals: list) -> None:
    """Every value read is the original, bit for bit; and a passed verify_all means all read."""
    values = [o for o in outcomes if isinstance(o, dict)]
    for value in values:
        index = int(value["__key__"].split("_")[1]) - 1
        assert 0 <= index < len(originals) and same(value, originals[index]), value["__key__"]
    if outcomes and outcomes[-1] == "verified":
        assert len(values) == len(originals)


@FUZZ
@given(data=st.data(), compression=st.sampled_from(COMPRESSIONS),
       target=st.sampled_from(["shard_000000.tar", "shard_000001.tar", ".shard_000000.idx",
                               ".shard_000001.idx"]),
       fix=st.booleans(), fix_headers=st.booleans(), count=st.integers(1, 3))
def test_mutated_shards_read_exactly_or_fail_typed(bases, data, compression, target, fix, fix_headers, count):
    """Raw byte mutations; `fix` records the new size and SHA-256 in the manifest, and
    `fix_headers` recomputes the tar header checksums of a shard (so forged header fields are
    met by the field checks, not the checksum)."""
    base = bases[compression]
    mutated = base.files[target]
    for _ in range(count):
        mutated = mutate(data.draw, mutated, base.hot[target])
    if fix_headers and target.endswith(".tar") and len(mutated) == len(base.files[target]):
        mutated = fix_header_checksums(mutated, base.hot[target])
    with tempfile.TemporaryDirectory() as tmp:
        root = write_mutant(base, Path(tmp) / "ds", target, mutated, fix)
        check_exact(record(read_everything(root, SHARD_ERRORS)), make_samples())


def fix_header_checksums(data: bytes, hot: list[int]) -> bytes:
    """Recompute the checksum of every member header of a (same-length) mutated shard."""
    out = bytearray(data)
    for start in sorted({p - p % h.BLOCK for p in hot}):
        block = out[start:start + h.BLOCK]
        if len(block) == h.BLOCK and block[257:262] == b"ustar":
            out[start:start + h.BLOCK] = h.with_checksum(block)
    return bytes(out)


def leaves(node: Any, path: tuple = ()) -> list[tuple]:
    """Paths to every value in a JSON document (containers included)."""
    out = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            out += leaves(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += leaves(value, path + (i,))
    return out


JSON_VALUES = st.one_of(
    st.integers(-3, 3), st.integers(-(2**70), 2**70), st.none(), st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
    st.sampled_from(["npy", "json", "none", "zstd", "<f4", "<i8", "|O", "array", "shard_000001.tar",
                     ".shard_000000.idx", "../x", "metadata", "lfp"]),
    st.lists(st.integers(-1, 20) | st.none(), max_size=4), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@FUZZ
@given(data=st.data(), compression=st.sampled_from(COMPRESSIONS), count=st.integers(1, 3))
def test_manifest_values_replaced_read_exactly_or_fail_typed(bases, data, compression, count):
    """Structure-aware manifest fuzzing: any value (or container) replaced by another JSON value,
    integers nudged by one, keys deleted."""
    base = bases[compression]
    doc = json.loads(base.files[h.MANIFEST])
    for _ in range(count):
        path = data.draw(st.sampled_from(leaves(doc)[1:]))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        current = parent[path[-1]]
        how = data.draw(st.sampled_from(["replace", "nudge", "delete"]))
        if how == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif how == "nudge" and type(current) is int:
            parent[path[-1]] = current + data.draw(st.sampled_from([-1, 1, 512, -512]))
        else:
            parent[path[-1]] = data.draw(JSON_VALUES)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_mutant(base, Path(tmp) / "ds", h.MANIFEST, json.dumps(doc).encode(), False)
        check_exact(record(read_everything(root, MANIFEST_ERRORS)), make_samples())


@FUZZ
@given(data=st.data(), compression=st.sampled_from(COMPRESSIONS), shard=st.integers(0, 1),
       count=st.integers(1, 3))
def test_index_values_replaced_read_exactly_or_fail_typed(bases, data, compression, shard, count):
    """Structure-aware index fuzzing: entries (offset, sizes, CRC-32) changed, the index stored
    as valid NPY with its SHA-256 fixed in the manifest, so the layout checks are what must hold."""
    base = bases[compression]
    rows = h.read_index(base.root, shard)
    for _ in range(count):
        at = tuple(data.draw(st.integers(0, n - 1)) for n in rows.shape)
        old = int(rows[at])
        rows[at] = data.draw(st.one_of(
            st.integers(max(old - 600, 0), old + 600), st.integers(0, 2**64 - 1),
            st.sampled_from([0, 1, 511, 512, 8**11 - 1, 8**11, 2**32, 2**63])))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(shutil.copytree(base.root, Path(tmp) / "ds"))
        h.write_index(root, shard, rows)
        check_exact(record(read_everything(root, SHARD_ERRORS)), make_samples())


@FUZZ
@given(data=st.data(), compression=st.sampled_from(COMPRESSIONS), count=st.integers(1, 2))
def test_mutated_manifest_reads_exactly_or_fails_typed(bases, data, compression, count):
    base = bases[compression]
    mutated = base.files[h.MANIFEST]
    for _ in range(count):
        mutated = mutate(data.draw, mutated, base.hot[h.MANIFEST])
    with tempfile.TemporaryDirectory() as tmp:
        root = write_mutant(base, Path(tmp) / "ds", h.MANIFEST, mutated, False)
        check_exact(record(read_everything(root, MANIFEST_ERRORS)), make_samples())


@FUZZ
@given(data=st.data(), compression=st.sampled_from(COMPRESSIONS),
       target=st.sampled_from(["shard_000000.tar", "shard_000001.tar"]))
def test_without_crc_checks_corrupt_payloads_still_fail_typed(bases, data, compression, target):
    """With verify='none' damaged payloads reach the decompressors and decoders: they may give
    other values, but only of the declared dtype and shape, and fail only with typed errors."""
    base = bases[compression]
    mutated = mutate(data.draw, base.files[target], base.hot[target])
    with tempfile.TemporaryDirectory() as tmp:
        root = write_mutant(base, Path(tmp) / "ds", target, mutated, True)
        for outcome in record(read_everything(root, SHARD_ERRORS, verify="none")):
            if isinstance(outcome, dict):
                assert outcome["lfp"].dtype == np.dtype("<f4") and outcome["lfp"].shape == (2, 8)
                assert outcome["spikes"].dtype == np.dtype("<i8") and outcome["spikes"].shape == (3, 5)
                assert isinstance(outcome["note"], str) and isinstance(outcome["metadata"], dict)


def test_unmutated_bases_read_exactly(bases):
    """Control: with no mutation the property's exact branch is taken for every sample."""
    for base in bases.values():
        outcomes = read_everything(base.root, SHARD_ERRORS)
        assert outcomes[-1] == "verified" and sum(isinstance(o, dict) for o in outcomes) == 3
        check_exact(outcomes, make_samples())
