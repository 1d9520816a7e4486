"""The crafted datasets of issue 11 and the reader entry points that must survive them, for
tests/test_hostile_entrypoints.py.

`CASES` build each crafted dataset from a valid one written by `WebDatasetWriter` (forged with
tests/hostile.py, so every checksum around the forgery is right and the forgery reaches the code
it targets) and say what reading it may give: which samples must never come back, whether a
reader that reads every sample must fail, what its error must name. `read_entry` is the job the
fork server runs (tests/isolated.py): it drives one entry point over a dataset the way a user
does and reports every sample it handed out (as `hostile.digest_sample`) and how it stopped.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

import hostile as h

SAMPLE_LIMIT = 64
"""Samples an entry point is asked for at most (a forged manifest may claim a billion)."""
MiB = 1 << 20


# -- the valid datasets ----------------------------------------------------------------------------

def samples(count: int = 3, width: int = 8) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
    """`count` samples: lfp float32 (2, width), spike counts int64 (3, 5) (stored packed), metadata."""
    rng = np.random.default_rng(count * 1000 + width)
    return [({"lfp": rng.standard_normal((2, width)).astype("<f4"), "spikes": rng.poisson(2, (3, 5))},
             {"trial": i, "label": f"t{i}"}) for i in range(count)]


def write(root: Path, compression: str, shard_size: int = 2, count: int = 3, width: int = 8) -> Path:
    """A valid dataset of `samples(count, width)` at `root`."""
    from neurocodec import WebDatasetWriter

    with WebDatasetWriter(root, shard_size=shard_size, compression=compression, fsync=False) as w:
        for fields, metadata in samples(count, width):
            w.write_sample(fields, metadata)
    return root


def original_digests(count: int = 3, width: int = 8) -> list[dict[str, list]]:
    """What every reader must hand out for sample i of `write(..., count, width)`."""
    return [{**{k: h.digest(v) for k, v in fields.items()}, "metadata": h.digest(metadata),
             "__key__": h.digest(f"sample_{i + 1:09d}")}
            for i, (fields, metadata) in enumerate(samples(count, width))]


# -- the crafted datasets --------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One crafted dataset and what reading it may give.

    `damaged`: global samples that must never be handed out. `must_fail`: an entry point that
    reads every sample must end with an error. `names`: the error message must contain one of
    these (the dataset, a shard or a member), and also `field` when given. `truncate`: the shard
    file (relative to the dataset) truncated to 0 bytes once the reader has opened the dataset and
    handed out its first sample. `count` and `width` describe the valid dataset it starts from.
    """

    name: str
    build: Callable[[Path], None]
    compression: str = "none"
    shard_size: int = 2
    count: int = 3
    width: int = 8
    damaged: frozenset = frozenset()
    must_fail: bool = True
    field: str | None = None
    truncate: str | None = None
    names: tuple[str, ...] = ("shard_000000", "sample_", "dataset_metadata.json")

    @property
    def shuffle(self) -> bool:
        """Loaders shuffle (their default) except where the order must reach shard 0 first."""
        return self.truncate is None


def object_dtype(root: Path, compression: str) -> None:
    """lfp declared `|O`, and every lfp payload an `|O` .npy (numpy's header) over pointer-like
    bytes: defect 1, an object array dereferencing the attacker's bytes."""
    doc = h.load_manifest(root)
    next(f for f in doc["fields"] if f["name"] == "lfp")["dtype"] = "|O"
    h.save_manifest(root, doc)
    forged = h.forged_npy(np.dtype("O"), (2, 8), b"\x41" * 128)
    h.set_field_payloads(root, "lfp", {i: forged for i in range(3)}, compression)


def raw_size_wrap(root: Path, compression: str) -> None:
    """Sample 0's lfp is a 1 GiB decompression bomb whose index row declares a decoded size of
    2**63+5 (and the manifest's limit admits it): defect 2, a size that turns negative as int64
    and unbounds the decompressor (the zstd frame states no content size)."""
    size = 1 << 30
    bomb = h.zstd_rle_frame(size, declared=None) if compression == "zstd" else h.bomb(compression, size)
    members = h.read_members(root, 0)
    position = h.member_position(root, 0, 0, "lfp")
    members[position] = h.Member(h.ustar_header(members[position].name, len(bomb)), bomb, 2**63 + 5)
    h.write_members(root, 0, members)


def billion_samples(root: Path) -> None:
    """The one shard claims 999,999,999 samples (the index holds 3): defect 7, the loaders size
    their epoch order by the claim before any index is checked."""
    doc = h.load_manifest(root)
    doc["shards"][0]["samples"] = doc["total_samples"] = 999_999_999
    h.save_manifest(root, doc)


def unbatchable_dtype(dtype: str) -> Callable[[Path], None]:
    """lfp declared `dtype`, its payloads that dtype as numpy writes it: defect 6, dtypes the
    loaders cannot batch reaching collate."""
    def build(root: Path) -> None:
        doc = h.load_manifest(root)
        next(f for f in doc["fields"] if f["name"] == "lfp")["dtype"] = dtype
        h.save_manifest(root, doc)
        values = {"S8": lambda v: np.char.mod("%8.4f", v).astype("S8"),
                  "M8[ns]": lambda v: v.view("<i4").astype("M8[ns]"), ">f4": lambda v: v.astype(">f4")}[dtype]
        lfp = {i: h.npy_bytes(values(fields["lfp"])) for i, (fields, _) in enumerate(samples())}
        h.set_field_payloads(root, "lfp", lfp, "none")
    return build


def zstd_900mib(root: Path) -> None:
    """Sample 0's lfp is a 28 KB zstd frame honestly declaring 900 MiB (index, manifest and frame
    agree): defect 11, decoded whatever the memory, surfacing as MemoryError."""
    size = 900 * MiB
    members = h.read_members(root, 0)
    position = h.member_position(root, 0, 0, "lfp")
    old = members[position]
    payload = h.zstd_rle_frame(size, declared=size)
    members[position] = h.Member(h.ustar_header(old.name, len(payload)), payload, size)
    h.write_members(root, 0, members)


CASES = {c.name: c for c in (
    Case("object_dtype-none", lambda r: object_dtype(r, "none"), damaged=frozenset(range(3)), field="lfp"),
    Case("object_dtype-zstd", lambda r: object_dtype(r, "zstd"), "zstd", damaged=frozenset(range(3)), field="lfp"),
    *(Case(f"raw_2_63_plus_5-{c}", functools.partial(raw_size_wrap, compression=c), c, damaged=frozenset({0}))
      for c in ("xz", "bz2", "zstd")),
    Case("billion_samples", billion_samples, shard_size=4),
    *(Case(f"dtype-{d}", unbatchable_dtype(d), damaged=frozenset(range(3)), field="lfp") for d in ("S8", "M8[ns]", ">f4")),
    Case("zstd_900MiB_member", zstd_900mib, "zstd", damaged=frozenset({0})),
    Case("truncated_after_open", lambda r: None, shard_size=32, count=40, width=2048, must_fail=False,
         truncate="shard_000000.tar"),
)}


def build_case(case: Case, where: Path) -> Path:
    """The crafted dataset of `case` at `where` (a fresh copy every time)."""
    write(where, case.compression, case.shard_size, case.count, case.width)
    case.build(where)
    return where


# -- the entry points, run in a forked process -------------------------------------------------------

def unbatch(batch: dict[str, Any]) -> dict[str, Any]:
    """Sample 0 of a DataLoader batch of size 1."""
    return {k: v[0] for k, v in batch.items()}


def _samples(entry: str, root: str, shuffle: bool, out: str) -> Iterator[dict[str, Any]]:
    """The samples (or summaries) entry point `entry` hands out over the dataset at `root`."""
    import neurocodec
    from neurocodec.dataset import legacy

    if entry == "dataset_index":
        with neurocodec.Dataset(root) as ds:
            for i in range(min(len(ds), SAMPLE_LIMIT)):
                yield ds[i]
    elif entry == "dataset_iter":
        with neurocodec.Dataset(root) as ds:
            yield from ds
    elif entry == "webdataset_loader":
        yield from neurocodec.WebDatasetLoader(root, shuffle=shuffle)
    elif entry == "random_access":
        ds = neurocodec.RandomAccessWebDataset(root)
        for i in range(min(len(ds), SAMPLE_LIMIT)):
            yield ds[i]
    elif entry.startswith("dataloader_"):
        loader = neurocodec.create_webdataset_dataloader(root, batch_size=1, num_workers=int(entry[-1]), shuffle=shuffle)
        it = iter(loader)
        try:
            for batch in it:
                yield unbatch(batch)
        finally:
            del it  # shuts its workers down before the forked job exits
    elif entry == "info_class":
        info = neurocodec.ShardedDatasetInfo(root)
        info.print_summary(file=io.StringIO())
        yield {"summary": info.get_summary()}
    elif entry == "legacy_iter":
        yield from legacy.iter_legacy_samples(root)
    elif entry == "legacy_convert":
        yield {"summary": legacy.convert_legacy_shards(root, out)}
    else:
        raise ValueError(entry)


def read_entry(entry: str, root: str, shuffle: bool = True, truncate: str | None = None,
               out: str = "") -> dict[str, Any]:
    """Drive `entry` over `root`: every item's digest, in order, up to SAMPLE_LIMIT, and the
    exception that stopped it (whatever its type: the test judges it). With `truncate`, that
    file is truncated to 0 bytes right after the first item (legacy_convert: before the call,
    which hands out nothing before it ends)."""
    from isolated import describe

    if truncate and entry == "legacy_convert":
        os.truncate(truncate, 0)
        truncate = None
    items: list[dict] = []
    try:
        for item in _samples(entry, root, shuffle, out):
            items.append(h.digest_sample(item) if "summary" not in item else {"summary": ["value", "dict", ""]})
            if truncate and len(items) == 1:
                os.truncate(truncate, 0)
            if len(items) >= SAMPLE_LIMIT:
                break
    except BaseException as exc:  # MemoryError and the rest included: reported, judged by the test
        return {"items": items, "error": describe(exc)}
    return {"items": items, "error": None}


ENTRIES = ("dataset_index", "dataset_iter", "webdataset_loader", "random_access", "dataloader_0",
           "dataloader_2", "info_class", "legacy_iter", "legacy_convert")
MANIFEST_ONLY = ("info_class",)
LEGACY = ("legacy_iter", "legacy_convert")


def warm() -> None:
    """The fork server's warm-up: every entry point once over a valid dataset, so that lazy
    imports, plugins and thread arenas exist before the forks whose memory is capped."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = write(Path(tmp) / "ds", "none")
        for entry in ENTRIES:
            result = read_entry(entry, str(root), out=str(Path(tmp) / f"out-{entry}"))
            assert result["error"] is None, (entry, result["error"])
        shutil.rmtree(root)


def allocate(size: int) -> int:
    """Allocate and touch `size` bytes: the control that shows the cap is in force."""
    return len(bytearray(size))
