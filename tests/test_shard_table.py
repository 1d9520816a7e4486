"""The shard table (format version 3, `neurocodec.format.shard_table`): a dataset of more shards
than its threshold keeps its shard rows in a binary table beside the manifest.

The same samples are written twice, with the threshold lowered (30 shards of 2 samples: a
table) and with JSON rows, and read back through every reader; crafted tables are refused with
DatasetError naming the file; a URL dataset (moto on loopback) reads its table; 10^5 synthetic
shards open without a Python object per shard.
"""

from __future__ import annotations

import json
import pickle
import shutil
import tracemalloc
import uuid
from pathlib import Path

import numpy as np
import pytest

from loader_util import flat_ids, sample_id
from neurocodec import WebDatasetWriter
from neurocodec.dataset.append import append_datasets
from neurocodec.dataset.merge import merge_datasets
from neurocodec.dataset.reader import Dataset, read_manifest
from neurocodec.errors import DatasetError
from neurocodec.format import layout, limits, shard_table, shard_table_write
from neurocodec.loader.dataloader import create_webdataset_dataloader
from neurocodec.loader.datasets import RandomAccessWebDataset, WebDatasetLoader

N, SHARD, ABOVE = 60, 2, 5  # 30 shards


def write_ids(path: Path, first: int = 0, n: int = N, **kw) -> Path:
    """Sample i holds x = [i, 7i + 1] and metadata {"id": i} (as loader_util's datasets do)."""
    with WebDatasetWriter(path, shard_size=SHARD, fsync=False, **kw) as w:
        for i in range(first, first + n):
            w.write_sample({"x": np.array([i, 7 * i + 1], dtype=np.int64)}, metadata={"id": i})
    return path


def doc_of(path: Path) -> dict:
    return json.loads((path / layout.MANIFEST_PATH).read_text())


def tables(path: Path) -> list[str]:
    return sorted(p.name for p in (path / layout.HOME).iterdir() if shard_table.is_table_name(p.name))


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """(the dataset with a table, the same samples with JSON rows)."""
    root = tmp_path_factory.mktemp("pair")
    return write_ids(root / "table", shard_table_above=ABOVE), write_ids(root / "rows")


def test_threshold_chooses_the_table_and_the_version(pair):
    table, rows = pair
    doc, plain = doc_of(table), doc_of(rows)
    assert "shards" not in doc and doc["format_version"] == 3 and doc["total_shards"] == 30
    assert doc["shard_table"]["shards"] == 30 and tables(table) == [doc["shard_table"]["name"]]
    assert doc["writer"]["shard_table_above"] == ABOVE
    assert plain["format_version"] == 1 and len(plain["shards"]) == 30 and "shard_table_above" not in plain["writer"]
    assert (table / layout.HOME / doc["shard_table"]["name"]).stat().st_size == shard_table.table_bytes(30)


def test_entries_and_samples_equal_the_json_rows(pair):
    table, rows = pair
    with Dataset(table) as a, Dataset(rows) as b:
        assert isinstance(a.shards, shard_table.TableShards) and isinstance(b.shards, tuple)
        assert a.shards == b.shards and list(a.shards) == list(b.shards) and a.shards[-1] == b.shards[-1]
        assert a.shards[3:6] == b.shards[3:6] and len(a) == len(b) == N
        assert [sample_id(s | {"__key__": layout.sample_key(i)}) for i, s in enumerate(a)] == list(range(N))
        for i in (0, 1, 2, 33, 59):
            assert a.locate(i) == b.locate(i) and a[i]["metadata"] == {"id": i}
        assert a.verify_all() == N
    assert read_manifest(table).shards == read_manifest(rows).shards


def test_loaders_shuffle_resume_random_access(pair):
    table, rows = pair
    orders = []
    for path in pair:
        full = [sample_id(s) for s in WebDatasetLoader(path, shuffle=True, buffer_size=8, seed=3)]
        loader = WebDatasetLoader(path, shuffle=True, buffer_size=8, seed=3)
        it = iter(loader)
        head = [sample_id(next(it)) for _ in range(21)]
        state = loader.state_dict()
        resumed = WebDatasetLoader(path, shuffle=True, buffer_size=8, seed=3)
        resumed.load_state_dict(state)
        assert head + [sample_id(s) for s in resumed] == full and sorted(full) == list(range(N))
        orders.append(full)
    assert orders[0] == orders[1]
    a, b = RandomAccessWebDataset(table), RandomAccessWebDataset(rows)
    for i in (59, 0, 31, 17):
        assert sample_id(a[i]) == sample_id(b[i]) == i


@pytest.mark.multiprocess
def test_dataloader_with_two_workers(pair):
    got = [flat_ids(create_webdataset_dataloader(p, batch_size=4, num_workers=2, seed=1, buffer_size=8))
           for p in pair]
    assert got[0] == got[1] and sorted(got[0]) == list(range(N))


def test_table_shards_pickle(pair):
    shards = read_manifest(pair[0]).shards
    again = pickle.loads(pickle.dumps(shards))
    assert again == shards and again[29] == shards[29]


def test_append_keeps_versions_and_crosses_the_threshold(tmp_path):
    grown = write_ids(tmp_path / "grown", n=20, shard_table_above=12)  # 10 shards: JSON rows
    assert "shards" in doc_of(grown)
    write_ids(grown, first=20, n=20, append=True)  # 20 shards: a table now
    assert doc_of(grown)["format_version"] == 3 and len(tables(grown)) == 1
    write_ids(grown, first=40, n=20, append=True)
    doc = doc_of(grown)
    assert doc["version"] == 3 and doc["total_shards"] == 30 and len(tables(grown)) == 1
    kept = grown / layout.HOME / layout.version_dir(2)
    assert [p.name for p in kept.iterdir() if shard_table.is_table_name(p.name)]  # version 2's own table
    for version, n in ((1, 20), (2, 40), (None, 60)):
        with Dataset(grown, version=version) as ds:
            assert [int(s["metadata"]["id"]) for s in ds] == list(range(n))
    assert isinstance(read_manifest(grown, version=1).shards, tuple)


def test_append_and_merge_of_tables(tmp_path, pair):
    target = tmp_path / "target"
    shutil.copytree(pair[0], target)
    extra = write_ids(tmp_path / "extra", first=N, n=10)
    manifest = append_datasets(target, [extra], fsync=False)
    assert len(manifest.shards) == 35 and doc_of(target)["total_shards"] == 35
    # The table's records copied, the appended entries encoded: the bytes of the entries' table.
    assert isinstance(manifest.shards, shard_table_write.ExtendedShards)
    assert shard_table_write.encode_table(manifest.shards, 0) == shard_table_write.encode_table(
        tuple(manifest.shards), 0)
    assert manifest.shards == read_manifest(target).shards and manifest.shards[31] == read_manifest(target).shards[31]
    with Dataset(target) as ds:
        assert [s["metadata"]["id"] for s in ds] == list(range(N + 10))
    merged = merge_datasets([pair[0], extra], tmp_path / "merged", 3, fsync=False)  # writer settings of the first
    assert len(merged.shards) == 24 and doc_of(tmp_path / "merged")["shard_table"]["shards"] == 24
    with Dataset(tmp_path / "merged") as ds:
        assert [s["metadata"]["id"] for s in ds] == list(range(N + 10))


def test_overwrite_leaves_one_table(tmp_path):
    path = write_ids(tmp_path / "ds", shard_table_above=ABOVE)
    first = tables(path)
    write_ids(path, n=N - 2, overwrite=True, shard_table_above=ABOVE)
    assert len(tables(path)) == 1 and tables(path) != first
    with Dataset(path) as ds:
        assert len(ds.shards) == 29 and [s["metadata"]["id"] for s in ds] == list(range(N - 2))
    write_ids(path, n=4, overwrite=True)  # two shards: JSON rows again, and no table left
    assert tables(path) == [] and doc_of(path)["format_version"] == 1


def test_info_and_verify(tmp_path, pair, capsys):
    from neurocodec import ShardedDatasetInfo
    from neurocodec.cli import main

    info = ShardedDatasetInfo(pair[0]).get_summary()
    assert info["format_version"] == 3 and info["total_shards"] == 30
    assert info["bytes"] == ShardedDatasetInfo(pair[1]).get_summary()["bytes"] and info["files"]["ok"]
    path = tmp_path / "bad"
    shutil.copytree(pair[0], path)
    (path / "shard_000007.tar").unlink()
    capsys.readouterr()
    assert main(["verify", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "shard shard_000007.tar" in out and "1 of 30 shards bad" in err
    check = ShardedDatasetInfo(path).check_files()
    assert not check.ok and check.bad_shards == ("shard_000007.tar",)


# -- crafted tables -------------------------------------------------------------------------
def craft(path: Path, *, samples=None, starts=None, records=None, first: int = 0, doc_changes=None,
          base=None) -> None:
    """Rewrite the table of the dataset at `path` from these columns (a consistent head digest
    and name), and change the manifest as `doc_changes` says."""
    doc = doc_of(path)
    old = path / layout.HOME / doc["shard_table"]["name"]
    shards = base if base is not None else read_manifest(path).shards
    samples = shards.samples if samples is None else np.asarray(samples)
    starts = shards.starts if starts is None else np.asarray(starts)
    records = b"".join(shards.records()) if records is None else records
    data, digest = shard_table_write.encode_columns(samples, starts, records, first)
    old.unlink()
    name = shard_table.table_name(digest)
    (path / layout.HOME / name).write_bytes(data)
    doc["shard_table"] = {"name": name, "bytes": len(data), "sha256": digest, "shards": len(samples)}
    doc["total_shards"] = len(samples)
    for key, value in (doc_changes or {}).items():
        doc["shard_table"][key] = value
    (path / layout.MANIFEST_PATH).write_text(json.dumps(doc))


@pytest.fixture
def victim(tmp_path, pair) -> Path:
    path = tmp_path / "victim"
    shutil.copytree(pair[0], path)
    return path


def refused(path: Path, match: str, name: str | None = None) -> None:
    with pytest.raises(DatasetError, match=match) as info:
        read_manifest(path)
    assert (name or layout.MANIFEST) in str(info.value) or "shards-" in str(info.value)


def table_file(path: Path) -> Path:
    return path / layout.HOME / doc_of(path)["shard_table"]["name"]


def test_truncated_or_grown_table(victim):
    file = table_file(victim)
    data = file.read_bytes()
    file.write_bytes(data[:-1])
    refused(victim, "bytes, but a table of 30 shards has", file.name)
    file.write_bytes(data + b"\0")
    refused(victim, "bytes, but a table of 30 shards has", file.name)
    file.unlink()
    refused(victim, "shard table the manifest names is missing", file.name)


def test_head_checksum_and_declared_size(victim):
    file = table_file(victim)
    data = bytearray(file.read_bytes())
    data[70] ^= 1  # a sample count
    file.write_bytes(bytes(data))
    refused(victim, "does not match the SHA-256", file.name)
    doc = doc_of(victim)
    doc["shard_table"]["bytes"] += 88
    (victim / layout.MANIFEST_PATH).write_text(json.dumps(doc))
    refused(victim, r"bytes must be \d+ for 30 shards")


def test_record_block_checksum(victim):
    file = table_file(victim)
    data = bytearray(file.read_bytes())
    data[-5] ^= 1  # the last shard's index checksum
    file.write_bytes(bytes(data))
    shards = read_manifest(victim).shards  # the head is intact
    with pytest.raises(DatasetError, match="block 0 of the shard records .* does not match its checksum") as info:
        shards[29]
    assert file.name in str(info.value)


@pytest.mark.parametrize("change, match", [
    ({"name": "../../etc/shards-0123456789abcdef.table"}, "is not a shard table's file name"),
    ({"name": "shards-0123456789abcdef.table"}, "sha256 must be the 64 hex digits the name begins with"),
    ({"shards": 31}, "lists 31 shards but total_shards is 30"),
    ({"shards": 10**9, "bytes": shard_table.table_bytes(10**9)}, "shards must be an integer from 0 to 60"),
    ({"shards": True}, "shards must be an integer"),
    ({"extra": 1}, "must be an object of name, bytes, sha256 and shards"),
])
def test_manifest_entry_refused(victim, change, match):
    doc = doc_of(victim)
    doc["shard_table"].update(change)
    (victim / layout.MANIFEST_PATH).write_text(json.dumps(doc))
    tracemalloc.start()
    try:
        refused(victim, match)
        assert tracemalloc.get_traced_memory()[1] < 2 << 20  # refused before anything is sized by it
    finally:
        tracemalloc.stop()


def test_version_and_rows_with_a_table_refused(victim):
    doc = doc_of(victim)
    (victim / layout.MANIFEST_PATH).write_text(json.dumps({**doc, "format_version": 2}))
    refused(victim, "format_version 2 has no shard tables")
    (victim / layout.MANIFEST_PATH).write_text(json.dumps({**doc, "shards": []}))
    refused(victim, "a manifest with a shard_table lists no shards")


def test_inconsistent_columns_refused(victim):
    shards = read_manifest(victim).shards
    samples, starts = shards.samples.copy(), shards.starts.copy()
    starts[7] += 1
    craft(victim, starts=starts)
    refused(victim, "shard 7's first_sample does not follow", "shards-")
    samples[3] = 0
    craft(victim, samples=samples, starts=shards.starts, base=shards)
    refused(victim, "sample count is not positive", "shards-")
    samples = shards.samples.copy()
    samples[-1] += 1
    craft(victim, samples=samples, starts=shards.starts, base=shards)
    refused(victim, "the shards hold 61 samples but total_samples is 60", "shards-")


def test_count_mismatch_and_header_refused(victim):
    shards = read_manifest(victim).shards
    records = b"".join(shards.records())
    craft(victim, samples=shards.samples[:29], starts=shards.starts[:29], records=records[:29 * 88],
          doc_changes={})
    refused(victim, "the shards hold 58 samples but total_samples is 60", "shards-")
    craft(victim, first=shard_table.MAX_FIRST_NUMBER, base=shards)
    refused(victim, "shard numbers from .* are out of range", "shards-")


def test_huge_sample_count_refused_by_the_ceiling(victim):
    shards = read_manifest(victim).shards
    doc = doc_of(victim)
    doc["total_samples"] = 10**8 + 58
    (victim / layout.MANIFEST_PATH).write_text(json.dumps(doc))
    samples = shards.samples.copy()
    samples[0] = 10**8
    starts = np.concatenate([[0], np.cumsum(samples)[:-1]])
    craft(victim, samples=samples, starts=starts, base=shards)
    tracemalloc.start()
    try:
        refused(victim, "above the per-member ceiling", "shards-")
        assert tracemalloc.get_traced_memory()[1] < 2 << 20
    finally:
        tracemalloc.stop()


def test_bad_record_values_refused_on_use(victim):
    shards = read_manifest(victim).shards
    rows = np.frombuffer(b"".join(shards.records()), dtype=shard_table.RECORD).copy()
    rows["legacy_index"][4] = 2
    rows["bytes"][5] = 100
    rows["index_bytes"][6] += 1
    craft(victim, records=rows.tobytes())
    shards = read_manifest(victim).shards
    assert shards[3].name == "shard_000003.tar"
    for number, match in ((4, "index layout 2"), (5, "too few for 2 samples"), (6, "index_bytes is")):
        with pytest.raises(DatasetError, match=match):
            shards[number]


# -- scale ----------------------------------------------------------------------------------
def test_opening_1e5_shards_makes_no_object_per_shard(tmp_path):
    """The head is read into arrays: memory stays near its 1.6 MB, never ~100 bytes a shard."""
    path = write_ids(tmp_path / "big", n=2)
    doc = doc_of(path)
    count, members = 10**5, len(doc["fields"])
    samples = np.full(count, 10, dtype=np.int64)
    starts = np.arange(count, dtype=np.int64) * 10
    rows = np.zeros(count, dtype=shard_table.RECORD)
    rows["bytes"], rows["index_bytes"] = limits.min_shard_bytes(10, members), limits.index_file_bytes(10, members)
    data, digest = shard_table_write.encode_columns(samples, starts, rows.tobytes(), 0)
    name = shard_table.table_name(digest)
    (path / layout.HOME / name).write_bytes(data)
    doc.pop("shards")
    doc.update(format_version=3, total_samples=10 * count, total_shards=count,
               shard_table={"name": name, "bytes": len(data), "sha256": digest, "shards": count})
    (path / layout.MANIFEST_PATH).write_text(json.dumps(doc))
    tracemalloc.start()
    try:
        manifest = read_manifest(path)
        assert len(manifest.shards) == count and manifest.shards[count - 1].first_sample == 10 * (count - 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * 16 * count, peak  # the head (16 bytes a shard) and little else
    ds = Dataset(path)
    assert ds.locate(10 * count - 1) == (count - 1, 9) and ds.locate(15) == (1, 5)
    assert int(np.sum(WebDatasetLoader(path, shuffle=True).stream.unit_sizes(0))) == 10 * count


# -- a URL dataset --------------------------------------------------------------------------
def test_table_dataset_on_s3(tmp_path):
    """Written to S3 with a table (12 samples, 6 shards, above 3), read back through the cache
    and a loader; replaced by 10 samples (5 shards): one table object left, the new one."""
    from neurocodec.storage import ShardCache
    from storage_servers import BUCKET, moto_server, s3_options

    def write(url: str, n: int, **kw) -> None:
        with WebDatasetWriter(url, shard_size=SHARD, fsync=False, storage_options=options, shard_table_above=3,
                              **kw) as w:
            for i in range(n):
                w.write_sample({"x": np.array([i, 7 * i + 1], dtype=np.int64)}, metadata={"id": i})

    with moto_server() as endpoint:
        import s3fs

        options = s3_options(endpoint)
        url = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/ds"
        write(url, 12)
        cache = ShardCache(tmp_path / "cache")
        with Dataset(url, storage_options=options, cache=cache) as ds:
            assert isinstance(ds.shards, shard_table.TableShards) and len(ds.shards) == 6
            assert [s["metadata"]["id"] for s in ds] == list(range(12))
        loader = WebDatasetLoader(url, storage_options=options, cache=cache, shuffle=True, seed=2)
        assert sorted(sample_id(s) for s in loader) == list(range(12))
        fs = s3fs.S3FileSystem(**options)
        home = url[len("s3://"):] + "/" + layout.HOME
        first = [p for p in fs.ls(home) if p.endswith(".table")]
        write(url, 10, overwrite=True)
        fs.invalidate_cache()
        now = [p for p in fs.ls(home) if p.endswith(".table")]
        assert len(first) == len(now) == 1 and first != now
        with Dataset(url, storage_options=options, cache=cache) as ds:
            assert [s["metadata"]["id"] for s in ds] == list(range(10))


def test_a_mix_with_a_table_dataset_resumes_exactly_and_its_fingerprint_follows_the_table(pair, tmp_path):
    table, rows = pair
    kw = dict(weights=[1, 1], batch_size=4, seed=2)
    ids = flat_ids(create_webdataset_dataloader([table, rows], num_workers=0, **kw))
    loader = create_webdataset_dataloader([table, rows], num_workers=0, **kw)
    it = iter(loader)
    head = flat_ids([next(it) for _ in range(5)])
    state = loader.state_dict()
    resumed = create_webdataset_dataloader([table, rows], num_workers=0, **kw)
    resumed.load_state_dict(state)
    assert head + flat_ids(resumed) == ids
    changed = shutil.copytree(table, tmp_path / "t")
    kept = create_webdataset_dataloader([changed, rows], num_workers=0, **kw)
    kept.load_state_dict(kept.state_dict())
    state = kept.state_dict()
    shutil.rmtree(changed)
    write_ids(changed, first=1, shard_table_above=ABOVE)    # other samples under the same path, same shape
    with pytest.raises(ValueError, match="mix"):
        create_webdataset_dataloader([changed, rows], num_workers=0, **kw).load_state_dict(state)
