"""Hugging Face `datasets` and Ray Data read a neurocodec dataset directory as it is (issue 17,
point 3): `load_dataset("webdataset", data_dir=DIR)` and `ray.data.read_webdataset(DIR)` get
every sample of the shards, with the keys and values neurocodec reads, because every file that
is not a shard is hidden (`.shard_000000.idx`, `.neurocodec/` with the manifest, splits,
statistics, earlier versions and the conversion report). Datasets of the older top-level layout
are still read, appended to and given splits and statistics where they keep them; replacing one
leaves the hidden layout. Ray starts a local cluster (about 10 s): that test is marked slow, and
skipped where ray is not installed."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from neurocodec import Dataset, append_datasets, compute_stats, create_shards_from_arrays, make_split
from neurocodec.dataset.info import ShardedDatasetInfo
from neurocodec.format import layout
from neurocodec.format.home import home

sys.path.insert(0, str(Path(__file__).parent))
from test_window_loader import convert, rich_session  # noqa: E402

LEGACY = Path(__file__).parent / "data" / "format-v1"
N = 13


def arrays(seed: int, n: int) -> dict[str, np.ndarray]:
    """Fields of a few dtypes and ranks (spike counts are stored packed, with the same values)."""
    rng = np.random.default_rng(seed)
    return {"spikes": rng.poisson(2, (n, 6, 3)).astype(np.int64),
            "behavior": rng.standard_normal((n, 6, 2)).astype(np.float32),
            "wave": rng.standard_normal((n, 9)),
            "counts": rng.integers(-300, 300, (n, 4)).astype(np.int16),
            "mask": rng.integers(0, 2, (n, 5)).astype(np.uint8)}


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """A writer's dataset with everything a directory can hold besides its shards: a second
    version (so a kept first one), statistics, and what an interrupted writer leaves."""
    root = tmp_path_factory.mktemp("interop")
    path = root / "written"
    create_shards_from_arrays(path, arrays(0, N - 4), shard_size=4, fsync=False,
                              metadata=[{"trial": i, "label": f"t{i}"} for i in range(N - 4)])
    create_shards_from_arrays(root / "more", arrays(1, 4), shard_size=4, fsync=False,
                              metadata=[{"trial": i, "label": f"t{i}"} for i in range(N - 4, N)])
    append_datasets(path, [root / "more"], fsync=False)
    compute_stats(path, None)
    (path / ".neurocodec-staging").mkdir()  # an interrupted overwrite's and a killed writer's leftovers
    (path / ".neurocodec-staging" / "shard_000000.tar").write_bytes(b"not a tar")
    (path / ".shard_000009.tar.4242.tmp").write_bytes(b"not a tar")
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """An NWB conversion with codecs="npy", a split and statistics (and its report)."""
    root = tmp_path_factory.mktemp("interop-nwb")
    files = [rich_session(root / "a.nwb", t0=0.0, seconds=2.0, seed=1),
             rich_session(root / "b.nwb", t0=10.0, seconds=1.5, seed=2)]
    return convert(root / "nwb", files, codecs="npy", split={"by": "session", "seed": 1}, stats=True)


def ours(path: Path) -> list[dict]:
    """Every sample as neurocodec reads it: numpy arrays and the metadata dict, by key."""
    with Dataset(path) as ds:
        return [{k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in sample.items()} for sample in ds]


def check_same(theirs: list[dict], path: Path) -> None:
    """`theirs` (rows of another reader, fields named `<field>.<ext>`) hold exactly our samples."""
    expected = ours(path)
    assert [r["__key__"] for r in theirs] == [s["__key__"] for s in expected]
    with Dataset(path) as ds:
        members = {f.name: f"{f.name}.{f.extension}" for f in ds.manifest.fields}
    for row, sample in zip(theirs, expected):
        assert set(row) - {"__key__", "__url__"} == set(members.values())
        assert Path(row["__url__"]).name.startswith("shard_")
        for name, member in members.items():
            if name == layout.METADATA_FIELD:
                assert row[member] == sample[name]
                continue
            value = np.asarray(row[member], dtype=sample[name].dtype)  # lists of Python numbers from HF
            assert value.shape == sample[name].shape and np.array_equal(value, sample[name]), (row["__key__"], name)


def stored_dtypes(ds: Dataset) -> dict[str, str]:
    """The dtype of each array field's `.npy` payloads: the manifest's, but spike counts are
    stored in the smallest unsigned type that holds them (docs/format.md 7.1), with equal values."""
    return {f.name: (np.asarray(ds[0][f.name]).max() < 256 and "|u1" if f.codec.get("pack_integers") else f.dtype)
            for f in ds.manifest.fields if f.dtype}


def test_only_the_shards_are_visible(written, converted):
    for path in (written, converted):
        visible = sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                         if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
        with Dataset(path) as ds:
            assert visible == [s.name for s in ds.shards]
            assert sorted(p.name for p in path.glob(".shard_*.idx")) == [f".{s.name[:-4]}.idx" for s in ds.shards]
        assert ShardedDatasetInfo(path).get_summary()["layout"] == "hidden"
    kept = written / ".neurocodec"
    assert (kept / layout.MANIFEST).is_file() and (kept / "versions" / "1" / layout.MANIFEST).is_file()
    assert (kept / "stats" / "all.json").is_file()
    assert {p.name for p in (converted / ".neurocodec").iterdir()} >= {
        layout.MANIFEST, "splits", "stats", "conversion-report.json"}


@pytest.mark.parametrize("which", ["written", "converted"])
def test_hugging_face_datasets_reads_the_directory(which, request, tmp_path):
    datasets = pytest.importorskip("datasets")
    path = request.getfixturevalue(which)
    loaded = datasets.load_dataset("webdataset", data_dir=str(path), split="train", cache_dir=str(tmp_path))
    with Dataset(path) as ds:
        assert loaded.num_rows == len(ds)
        stored = stored_dtypes(ds)
    assert {k: np.dtype(_leaf(loaded.features[f"{k}.npy"])).str for k in stored} == stored
    check_same(list(loaded), path)


def _leaf(feature) -> str:
    """The value type inside (nested) HF list features."""
    while hasattr(feature, "feature"):
        feature = feature.feature
    return feature.dtype


@pytest.mark.slow
def test_ray_data_reads_the_directory(written, converted):
    ray = pytest.importorskip("ray")
    import ray.data

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for path in (written, converted):
            rows = ray.data.read_webdataset(str(path)).take_all()
            check_same(sorted(rows, key=lambda r: r["__key__"]), path)
            with Dataset(path) as ds:
                stored = stored_dtypes(ds)
            assert {name: rows[0][f"{name}.npy"].dtype.str for name in stored} == stored
    finally:
        ray.shutdown()


@pytest.fixture
def legacy(tmp_path) -> Path:
    """A copy of a conversion written before the hidden layout (manifest and indexes at the top)."""
    path = tmp_path / "legacy"
    shutil.copytree(LEGACY / "nwb", path)
    return path


def test_splits_and_statistics_of_the_top_level_layout_stay_at_the_top(legacy):
    assert home(legacy) == legacy and len(ours(legacy)) > 0
    assert ShardedDatasetInfo(legacy).get_summary()["layout"] == "top-level"
    make_split(legacy, by="session", seed=1)
    compute_stats(legacy, "train")
    assert (legacy / "splits" / "default.json").is_file() and (legacy / "stats" / "default.json").is_file()
    assert not (legacy / layout.HOME).exists()
    with Dataset(legacy) as ds:
        assert len(ds) == json.loads((legacy / layout.MANIFEST).read_text())["total_samples"]


def test_an_append_keeps_the_top_level_layout(tmp_path):
    path = tmp_path / "arrays"
    shutil.copytree(LEGACY / "arrays", path)
    before = ours(path)
    rng = np.random.default_rng(5)
    more = {"eeg": rng.standard_normal((3, 16, 3)).astype(np.float32),
            "spikes": rng.integers(0, 3, (3, 10, 2)).astype(np.int64)}
    create_shards_from_arrays(path, more, shard_size=4, metadata=[{"i": i} for i in range(6, 9)], append=True,
                              fsync=False)
    assert home(path) == path and not (path / layout.HOME).exists()
    names = [s["index"] for s in json.loads((path / layout.MANIFEST).read_text())["shards"]]
    assert names == ["shard_000000.idx", "shard_000001.idx", ".shard_000002.idx"]
    assert (path / "versions" / "1" / layout.MANIFEST).read_bytes() == \
        (LEGACY / "arrays" / layout.MANIFEST).read_bytes()
    after = ours(path)
    assert [s["__key__"] for s in after] == [f"sample_{i:09d}" for i in range(1, 10)]
    for got, want in zip(after, before):
        assert all(np.array_equal(got[k], want[k]) for k in ("eeg", "spikes")) and got["metadata"] == want["metadata"]
    assert np.array_equal(np.stack([s["eeg"] for s in after[6:]]), more["eeg"])
    assert np.array_equal(np.stack([s["spikes"] for s in after[6:]]), more["spikes"])
    with Dataset(path, version=1) as ds:
        assert len(ds) == 6


def test_replacing_a_top_level_dataset_leaves_only_shards_visible(legacy):
    make_split(legacy, by="session", seed=1)
    create_shards_from_arrays(legacy, arrays(2, 5), shard_size=2, overwrite=True, fsync=False)
    assert home(legacy) == legacy / layout.HOME
    assert sorted(p.name for p in legacy.iterdir() if not p.name.startswith(".")) == \
        ["shard_000000.tar", "shard_000001.tar", "shard_000002.tar"]
    assert sorted(p.name for p in legacy.glob(".shard_*")) == [".shard_000000.idx", ".shard_000001.idx",
                                                              ".shard_000002.idx"]
    assert (legacy / layout.HOME / "splits" / "default.json").is_file()  # kept, stale as a replaced one's
    assert (legacy / layout.HOME / "conversion-report.json").is_file()
    values = ours(legacy)
    assert np.array_equal(np.stack([s["wave"] for s in values]), arrays(2, 5)["wave"])
