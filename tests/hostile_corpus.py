"""The hostile-shard corpus's shared parts: the valid base dataset, the case registry, the checks.

A corpus of hostile shards: each is rejected with neurocodec's typed error, fast, in bounded memory.
Every case starts from a valid dataset (written by `WebDatasetWriter`), damages one thing, and
then repairs everything around it (index rows, index SHA-256, shard size and SHA-256, field
size limits; see tests/hostile.py) so that the damage reaches the check named in the case's
docstring rather than an earlier one. Reading the damaged sample must raise `ShardError` naming
the shard and the member (or `DatasetError` / `UnknownCodecError` for manifest problems).

The cases are split by theme over tests/test_hostile_{tar,index,payloads,manifest}.py; each
module registers its cases in its own `CASES` list (see `registrar`) and checks each with `reject`.
Memory is bounded twice: in-process with tracemalloc (no case may allocate more than 32 MiB),
and for the whole corpus in a child process under `RLIMIT_AS` (tests/test_hostile_corpus.py:
its address space capped at 512 MiB above its size once imported), where the 4 GiB
decompression bombs would fail loudly if any check were missing. "Fast" is enforced by
pytest-timeout, not by clock assertions.
"""

from __future__ import annotations

import os
import re
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import hostile as h
from neurocodec import Dataset, WebDatasetWriter
from neurocodec.errors import NeurocodecError, ShardError

COMPRESSIONS = ("none", "zstd", "gz", "bz2", "xz")
SUFFIX = {"none": "", "zstd": ".zst", "gz": ".gz", "bz2": ".bz2", "xz": ".xz"}
SHARD0 = "shard_000000.tar"
BOMB = 4 * h.GiB
MAX_TRACED = 32 << 20
SAMPLES = 5


def make_samples() -> list[tuple[dict, dict]]:
    """The valid dataset's samples: (fields, metadata); two shards of 2 and one of 1."""
    rng = np.random.default_rng(7)
    return [
        ({"lfp": rng.standard_normal((2, 16)).astype("<f4"), "spikes": rng.poisson(3, (4, 10))},
         {"trial": i, "label": "ok"})
        for i in range(SAMPLES)
    ]


def member(sample: int, field: str, compression: str) -> str:
    """The name the format gives member (`sample`, `field`); `sample` is global and 0-based."""
    ext = "json" if field == "metadata" else "npy"
    return f"sample_{sample + 1:09d}.{field}.{ext}{SUFFIX[compression]}"


def write_base(root: Path) -> dict[str, Path]:
    """One valid dataset per compression under `root` (read-only: cases copy it)."""
    out = {}
    for compression in COMPRESSIONS:
        out[compression] = root / compression
        with WebDatasetWriter(out[compression], shard_size=2, compression=compression, fsync=False) as w:
            for fields, metadata in make_samples():
                w.write_sample(fields, metadata)
    return out


# -- the case registry ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Expect:
    """How the reader must fail: error type, message pattern, and what it must name."""

    error: type[NeurocodecError]
    match: str
    shard: str | None = SHARD0
    member: str | None = None
    sample: int = 0
    full: bool = False  # run verify_all() rather than reading `sample`


@dataclass(frozen=True)
class Case:
    """One hostile dataset: `build` damages a copy of the valid dataset and says what must fail."""

    name: str
    compression: str
    build: Callable[[Path, str], Expect]

    @property
    def id(self) -> str:
        return f"{self.name}[{self.compression}]"


def registrar(cases: list[Case]) -> Callable[..., Callable]:
    """A `case` decorator appending to `cases` (each test module keeps its own list)."""
    def case(*compressions: str) -> Callable:
        """Register the decorated builder once per compression (default: uncompressed only)."""
        def register(build: Callable[[Path, str], Expect]) -> Callable:
            for compression in compressions or ("none",):
                cases.append(Case(build.__name__, compression, build))
            return build
        return register
    return case


def build_case(c: Case, base: dict[str, Path], where: Path) -> tuple[Path, Expect]:
    """Copy the valid dataset for `c` to `where`, damage it; return it and what must fail."""
    root = h.copy_dataset(base[c.compression], where)
    return root, c.build(root, c.compression)


def read_rejected(root: Path, expect: Expect) -> NeurocodecError:
    """Open and read as `expect` says; return the error after checking type, message and names."""
    tracemalloc.start()
    try:
        with pytest.raises(expect.error) as info:
            with Dataset(root) as ds:
                if expect.full:
                    ds.verify_all()
                else:
                    ds[expect.sample]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    exc = info.value
    assert peak < MAX_TRACED, f"rejecting took {peak} bytes of traced memory"
    assert re.search(expect.match, str(exc)), f"{str(exc)!r} does not match {expect.match!r}"
    if expect.error is ShardError:
        assert exc.shard == expect.shard and expect.shard in str(exc)
        if expect.member is not None:
            assert exc.member == expect.member and expect.member in str(exc)
    return exc


def raw_payload(root: Path, compression: str, sample: int, field: str) -> bytes:
    """The decoded bytes of one member of shard 0 (of the valid dataset)."""
    m = h.read_members(root, 0)[h.member_position(root, 0, sample, field)]
    return h.decompress(compression, m.payload)


def put_payload(root: Path, compression: str, raw: bytes, *, sample: int = 0, field: str = "lfp",
                **options) -> Expect:
    """Replace one member of shard 0 by `raw` compressed as the dataset compresses, all consistent."""
    h.replace_member(root, 0, sample, field, payload=h.compress(compression, raw), raw=len(raw), **options)
    return Expect(ShardError, "", member=member(sample, field, compression), sample=sample)


def lfp_expect(compression: str, match: str, **kw) -> Expect:
    """A `ShardError` matching `match` that names sample 0's lfp member."""
    return Expect(ShardError, match, member=member(0, "lfp", compression), **kw)


def with_match(expect: Expect, match: str) -> Expect:
    """`expect` with its message pattern replaced by `match`."""
    return Expect(expect.error, match, expect.shard, expect.member, expect.sample, expect.full)


# -- the pickle trap and the per-case check ------------------------------------------------------

class Trap:
    """Unpickling this creates the directory `path`: proof that a pickle was (or was not) run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def trap_payload(root: Path) -> tuple[bytes, Path]:
    """An `np.save(allow_pickle=True)` object array that would mkdir a marker when unpickled."""
    marker = root.parent / f"{root.name}-UNPICKLED"
    return h.npy_bytes(np.array([Trap(str(marker)), 1], dtype=object), allow_pickle=True), marker


def reject(c: Case, base: dict[str, Path], tmp_path: Path) -> None:
    """Build case `c` under `tmp_path` and check that reading it is rejected, cleanly."""
    root, expect = build_case(c, base, tmp_path / "ds")
    read_rejected(root, expect)
    assert not (tmp_path / "ds-UNPICKLED").exists(), "a pickle was unpickled"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"], "reading wrote something"
