"""Hostile sizes: wrapped-around index sizes, the per-member ceiling, lying sample counts, and
oversized manifests (issue 11, defects 2, 7 and 11).

Before: an index raw size in [2**63, 2**64) passed the checks and became negative as int64, so
bz2 and xz decompressed without limit and zstd raised SystemError; a 28 KB zstd member honestly
declaring 900 MiB was decoded (a MemoryError under a memory limit); a 1 KB manifest claiming
999,999,999 samples made the shuffled loaders spend seconds and gigabytes on the epoch's order
before any index was checked; and a sparse 1 GiB manifest was read whole.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import hostile as h
from loader_util import child_env
from neurocodec import (Dataset, RandomAccessWebDataset, ShardedDatasetInfo, WebDatasetLoader,
                        create_webdataset_dataloader)
from neurocodec.errors import DatasetError, ShardError
from neurocodec.format import index as shard_index
from neurocodec.format import limits
from neurocodec.format.compression import DecompressionError, decompress
from neurocodec.format.manifest import MAX_MANIFEST_BYTES
from neurocodec.dataset.reader import read_manifest

pytestmark = pytest.mark.timeout(120)

COMPRESSED = ("zstd", "gz", "bz2", "xz")
MiB = 1 << 20


@pytest.fixture(autouse=True)
def no_ceiling_from_the_environment(monkeypatch):
    monkeypatch.delenv(limits.ENV_MAX_MEMBER_BYTES, raising=False)


def write(root: Path, compression: str = "none", samples: int = 4, shard_size: int = 2) -> Path:
    """A small valid dataset: lfp `<f4` (2, 16) and metadata."""
    from neurocodec import WebDatasetWriter

    rng = np.random.default_rng(9)
    with WebDatasetWriter(root, shard_size=shard_size, compression=compression, fsync=False) as w:
        for i in range(samples):
            w.write_sample({"lfp": rng.standard_normal((2, 16)).astype("<f4")}, {"i": i})
    return root


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sizes")
    return {c: write(root / c, c) for c in ("none", *COMPRESSED)}


def loaders(path: Path):
    """Every reader entry point, as a callable reading the whole dataset."""
    def dataset(p):
        with Dataset(p) as ds:
            return [ds[i] for i in range(len(ds))]
    return {
        "Dataset": dataset,
        "WebDatasetLoader": lambda p: list(WebDatasetLoader(p, buffer_size=4)),
        "RandomAccessWebDataset": lambda p: list(RandomAccessWebDataset(p)),
        "dataloader0": lambda p: list(create_webdataset_dataloader(p, batch_size=2, num_workers=0)),
        "info": lambda p: ShardedDatasetInfo(p).get_summary(),
    }


def refused_everywhere(path: Path, error: type, match: str, *, bound: int = 32 * MiB) -> None:
    """Every entry point raises `error` matching `match`, allocating less than `bound` bytes."""
    for name, read in loaders(path).items():
        tracemalloc.start()
        try:
            with pytest.raises(error, match=match):
                read(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < bound, (name, peak)


# -- defect 2: index sizes in [2**63, 2**64) --------------------------------------------------------

@pytest.mark.parametrize("compression", COMPRESSED)
@pytest.mark.parametrize("raw", [2**63, 2**64 - 2, 2**64 - 1])
def test_wrapping_raw_size_with_manifest_admitting_it_is_refused(bases, tmp_path, compression, raw):
    """The manifest admits 2**64 - 1 decoded bytes and the index claims `raw` for a 32 MiB bomb:
    refused by the ceiling when the manifest is parsed (before: bz2/xz inflated without bound,
    zstd raised SystemError), even with the ceiling raised to its maximum."""
    root = h.copy_dataset(bases[compression], tmp_path / "ds")
    h.replace_member(root, 0, 0, "lfp", payload=h.bomb(compression, 32 * MiB, chunk=8 * MiB)
                     if compression != "zstd" else h.zstd_rle_frame(32 * MiB, declared=None), raw=raw)
    doc = h.load_manifest(root)
    doc["fields"][0]["max_raw_bytes"] = 2**64 - 1
    h.save_manifest(root, doc)
    refused_everywhere(root, DatasetError, r"field 'lfp' declares members of up to 18446744073709551615 bytes "
                                           r"decoded, above the per-member ceiling of 268435456 bytes")
    with pytest.raises(DatasetError, match=r"above the per-member ceiling of 4611686018427387904 bytes"):
        read_manifest(root, max_member_bytes=limits.LARGEST_CEILING)


@pytest.mark.parametrize("raw", [2**62 + 1, 2**63, 2**63 + 7, 2**64 - 1])
def test_index_validation_compares_unsigned_before_any_conversion(raw):
    """Raw sizes at and above 2**63 in the uint64 index are refused even when the manifest's
    per-field limit (2**64 - 1 here) would admit them: by the ceiling, on the unsigned values."""
    rows = np.zeros((2, 2, 4), dtype=np.uint64)
    rows[1, 0, shard_index.RAW] = raw
    problem = shard_index.validate(rows, 10**6, np.full(2, 2**64 - 1, np.uint64), np.full(2, 2**40, np.uint64),
                                   max_member_bytes=limits.LARGEST_CEILING, names=["lfp", "metadata"])
    assert problem is not None and (problem.sample, problem.column) == (1, 0)
    assert "per-member ceiling of 4611686018427387904 bytes" in problem.why and "field 'lfp'" in problem.why


def test_index_raw_size_above_the_ceiling_names_the_member():
    rows = np.zeros((3, 2, 4), dtype=np.uint64)
    rows[2, 1, shard_index.RAW] = 1000
    problem = shard_index.validate(rows, 10**6, np.full(2, 5000, np.uint64), np.full(2, 5000, np.uint64),
                                   max_member_bytes=999, names=["lfp", "metadata"])
    assert (problem.sample, problem.column) == (2, 1)
    assert problem.why.startswith("a member decodes to more than the per-member ceiling of 999 bytes")


@pytest.mark.parametrize("compression", ("none", *COMPRESSED))
@pytest.mark.parametrize("expected", [-1, -2, -(2**63), 2**63, 2**64 - 1, limits.DEFAULT_MAX_MEMBER_BYTES + 1])
def test_decompress_refuses_sizes_outside_zero_to_the_ceiling(compression, expected):
    """Every decompressor gets a positive bound: a negative or oversized expected size (as a
    wrapped int64 would be) is a DecompressionError before decompressing (before: zstd raised
    SystemError for -1, bz2 and xz read -2 as no limit)."""
    data = h.compress(compression, b"x" * 1000) if compression != "zstd" else h.zstd_rle_frame(1000, declared=None)
    with pytest.raises(DecompressionError, match=r"decoded size -?\d+ is outside 0 to \d+ bytes"):
        decompress(compression, data, np.int64(expected) if -(2**63) <= expected < 2**63 else expected)


def test_decompress_ceiling_is_a_parameter():
    data = h.compress("gz", b"y" * 5000)
    assert decompress("gz", data, 5000) == b"y" * 5000
    with pytest.raises(DecompressionError, match=r"outside 0 to 4999 bytes"):
        decompress("gz", data, 5000, max_member_bytes=4999)


# -- defect 11: the per-member ceiling ---------------------------------------------------------------

def honest_big_member(root: Path, size: int) -> None:
    """Sample 0's lfp becomes a ~28 KB zstd frame honestly declaring `size` decoded bytes, the
    index and the manifest's max_raw_bytes saying so too."""
    h.replace_member(root, 0, 0, "lfp", payload=h.zstd_rle_frame(size, declared=size), raw=size)


def test_honest_900_mib_member_is_refused_by_the_default_ceiling(bases, tmp_path):
    root = h.copy_dataset(bases["zstd"], tmp_path / "ds")
    honest_big_member(root, 900 * MiB)
    assert (root / "shard_000000.tar").stat().st_size < 64 * 1024
    refused_everywhere(root, DatasetError, r"fields\[0\]\.max_raw_bytes: field 'lfp' declares members of up to "
                                           r"943718400 bytes decoded, above the per-member ceiling of 268435456")


CAPPED_CHILD = textwrap.dedent(r"""
    import json, resource, sys
    from neurocodec import Dataset
    from neurocodec.plugin.manager import default_registry

    default_registry()
    vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize:")).split()[1]) * 1024
    limit = vm + (512 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        with Dataset(sys.argv[1]) as ds:
            ds[0]
        print(json.dumps(None))
    except BaseException as exc:
        print(json.dumps([type(exc).__name__, str(exc)[-300:]]))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_honest_900_mib_member_under_a_memory_limit_is_the_library_error(bases, tmp_path):
    """As in the issue: under a 512 MiB address-space allowance the read fails with DatasetError
    (before: MemoryError while decompressing)."""
    root = h.copy_dataset(bases["zstd"], tmp_path / "ds")
    honest_big_member(root, 900 * MiB)
    proc = subprocess.run([sys.executable, "-c", CAPPED_CHILD, str(root)], capture_output=True, text=True,
                          timeout=100, env=child_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout)
    assert got is not None and got[0] == "DatasetError" and "per-member ceiling" in got[1], got


def test_ceiling_is_configurable_by_argument_and_environment(bases, tmp_path, monkeypatch):
    """A member above a lowered ceiling is refused naming the field; raised again, it reads."""
    root = h.copy_dataset(bases["gz"], tmp_path / "ds")
    lfp = h.load_manifest(root)["fields"][0]["max_raw_bytes"]
    assert read_manifest(root, max_member_bytes=lfp).fields[0].max_raw_bytes == lfp
    with pytest.raises(DatasetError, match=rf"field 'lfp' declares members of up to {lfp} bytes decoded, above "
                                           rf"the per-member ceiling of {lfp - 1} bytes"):
        read_manifest(root, max_member_bytes=lfp - 1)
    monkeypatch.setenv(limits.ENV_MAX_MEMBER_BYTES, str(lfp - 1))
    refused_everywhere(root, DatasetError, rf"per-member ceiling of {lfp - 1} bytes")
    monkeypatch.setenv(limits.ENV_MAX_MEMBER_BYTES, "1KiB")
    with Dataset(root) as ds:
        assert ds[3]["lfp"].shape == (2, 16)
    assert limits.max_member_bytes() == 1024


@pytest.mark.slow
@pytest.mark.multiprocess
def test_environment_ceiling_applies_with_dataloader_workers(bases, tmp_path):
    """NEUROCODEC_MAX_MEMBER_BYTES set for a training process applies there and in its workers:
    exactly the field's size reads (workers reopen the dataset under the same ceiling), one byte
    less is refused naming the field."""
    root = h.copy_dataset(bases["xz"], tmp_path / "ds")
    lfp = h.load_manifest(root)["fields"][0]["max_raw_bytes"]
    code = ("import sys\nfrom neurocodec import create_webdataset_dataloader\n"
            "print(sum(len(b['__key__']) for b in create_webdataset_dataloader(sys.argv[1], batch_size=1, "
            "num_workers=2)))")
    ok = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=100,
                        env=child_env(NEUROCODEC_MAX_MEMBER_BYTES=str(lfp)))
    assert ok.returncode == 0 and ok.stdout.split()[-1] == "4", ok.stderr[-2000:]
    low = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=100,
                         env=child_env(NEUROCODEC_MAX_MEMBER_BYTES=str(lfp - 1)))
    assert low.returncode == 1 and "DatasetError" in low.stderr and "field 'lfp'" in low.stderr, low.stderr[-2000:]


@pytest.mark.parametrize("value", ["0", "-5", "lots", "12 parsecs", str(2**62 + 1)])
def test_bad_ceiling_in_the_environment_is_a_clear_error(monkeypatch, bases, value):
    monkeypatch.setenv(limits.ENV_MAX_MEMBER_BYTES, value)
    with pytest.raises(ValueError, match=r"NEUROCODEC_MAX_MEMBER_BYTES=.* is not a size in bytes"):
        Dataset(bases["none"])


@pytest.mark.parametrize("value", [0, -1, 2**62 + 1, 1.5, True, "1GiB"])
def test_bad_ceiling_argument_is_a_clear_error(bases, value):
    with pytest.raises(ValueError, match=r"max_member_bytes must be an integer number of bytes"):
        read_manifest(bases["none"], max_member_bytes=value)


# -- defect 7: sample counts against sizes and files, and the manifest's own size -----------------

def claim_samples(root: Path, samples: int, *, consistent: bool) -> None:
    """Shard 0 claims `samples` samples (totals and first_sample kept consistent); with
    `consistent`, its bytes and index_bytes claim the sizes that many samples need."""
    doc = h.load_manifest(root)
    shards, members = doc["shards"], len(doc["fields"])
    shards[0]["samples"] = samples
    first = 0
    for entry in shards:
        entry["first_sample"] = first
        first += entry["samples"]
    doc["total_samples"] = first
    if consistent:
        shards[0]["bytes"] = samples * members * 512 + 1024
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<u8", "fortran_order": False,
                                                      "shape": (samples, members, 4)})
        shards[0]["index_bytes"] = len(header.getvalue()) + samples * members * 32
    h.save_manifest(root, doc)


def test_billion_samples_in_a_1kb_manifest_is_refused_before_any_order(bases, tmp_path):
    """999,999,999 samples in a shard of a few KB: refused at manifest parse, in bounded memory
    (before: the shuffled loaders spent seconds and 1.3 GiB building the order)."""
    root = h.copy_dataset(bases["none"], tmp_path / "ds")
    claim_samples(root, 999_999_997, consistent=False)
    refused_everywhere(root, DatasetError, r"shards\[0\]\.bytes is \d+, too few for 999999997 samples of 2 members")


def test_billion_samples_with_consistent_sizes_is_refused_by_the_index_size(bases, tmp_path):
    """The same claim with bytes and index_bytes claiming what it needs: the index would be
    64 GB, above the per-member ceiling that bounds every read."""
    root = h.copy_dataset(bases["none"], tmp_path / "ds")
    claim_samples(root, 999_999_997, consistent=True)
    refused_everywhere(root, DatasetError, r"shards\[0\]\.index of 999999997 samples of 2 members is \d+ bytes, "
                                           r"above the per-member ceiling")


def test_millions_of_samples_within_the_ceiling_are_checked_against_the_index_file(bases, tmp_path):
    """4,000,000 samples with consistent sizes (an index of 256,000,128 bytes, within the
    ceiling) but the real, small index on disk: the loaders refuse it naming the shard when
    they are built, before sizing an order or a sampler by it."""
    root = h.copy_dataset(bases["none"], tmp_path / "ds")
    claim_samples(root, 4_000_000, consistent=True)
    assert read_manifest(root).total_samples == 4_000_002
    match = r"shard shard_000000\.tar: index \.shard_000000\.idx has \d+ bytes, too few for the 4000000 samples"
    for build in (lambda: WebDatasetLoader(root), lambda: RandomAccessWebDataset(root),
                  lambda: create_webdataset_dataloader(root, num_workers=0),
                  lambda: create_webdataset_dataloader(root, num_workers=2)):
        tracemalloc.start()
        try:
            with pytest.raises(ShardError, match=match):
                build()
            assert tracemalloc.get_traced_memory()[1] < 8 * MiB
        finally:
            tracemalloc.stop()
    with pytest.raises(ShardError, match=r"shard_000000\.tar"):  # Dataset builds no order: refused on read
        Dataset(root)[0]


def test_missing_shard_files_are_left_to_the_reader(bases, tmp_path):
    """The loaders judge only index files that are present: a missing shard still fails (or is
    skipped) when its samples are read."""
    root = h.copy_dataset(bases["none"], tmp_path / "ds")
    (root / "shard_000001.tar").unlink()
    (root / ".shard_000001.idx").unlink()
    loader = WebDatasetLoader(root, shuffle=False, on_error="skip")
    assert [s["__key__"] for s in loader] == ["sample_000000001", "sample_000000002"]


@pytest.mark.parametrize("size", [MAX_MANIFEST_BYTES + 1, 1 << 30, 1 << 40])
def test_oversized_manifest_is_refused_by_its_size_unread(bases, tmp_path, size):
    """A sparse manifest of `size` bytes is refused from its size alone: nothing is read (the
    traced memory stays tiny; before, a 1 GiB one was read whole)."""
    root = h.copy_dataset(bases["none"], tmp_path / "ds")
    with open(root / h.MANIFEST, "r+b") as f:
        f.truncate(size)
    refused_everywhere(root, DatasetError, rf"dataset_metadata\.json: {size} bytes, larger than the "
                                           rf"{MAX_MANIFEST_BYTES} bytes a manifest may have", bound=1 * MiB)


def test_manifest_at_the_cap_still_parses(bases, tmp_path):
    """A valid manifest padded (with JSON whitespace) to exactly the cap is read."""
    root = h.copy_dataset(bases["none"], tmp_path / "ds")
    text = (root / h.MANIFEST).read_bytes().rstrip()
    (root / h.MANIFEST).write_bytes(text + b" " * (MAX_MANIFEST_BYTES - len(text)))
    assert read_manifest(root).total_samples == 4


def test_the_cap_holds_tens_of_thousands_of_shards():
    """The cap's reasoning: a shard entry as the writer writes it takes about 350 bytes."""
    from neurocodec.format.manifest import ShardEntry

    entry = ShardEntry(name="shard_000123.tar", index=".shard_000123.idx", samples=1000, first_sample=123000000,
                       bytes=104857600000, sha256="a" * 64, index_bytes=96128, index_sha256="b" * 64)
    per_entry = len(json.dumps({"shards": [entry.to_dict()] * 2}, indent=1, sort_keys=True)) / 2
    assert 300 < per_entry < 400 and MAX_MANIFEST_BYTES / per_entry > 20_000


def test_doc_states_the_ceiling_and_the_cap():
    text = (Path(__file__).parent.parent / "docs" / "format.md").read_text()
    assert f"{limits.DEFAULT_MAX_MEMBER_BYTES >> 20} MiB" in text and limits.ENV_MAX_MEMBER_BYTES in text
    assert f"{MAX_MANIFEST_BYTES >> 20} MiB" in text
    assert "1 GiB" not in text
