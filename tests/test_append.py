"""Appending sessions to a dataset (issue 16, point 4): new shards and a new version, the old
shards untouched and the old version readable exactly (through Dataset and loaders, with workers
that start after the append), splits of existing sessions unchanged, resume pinned to a version,
and refusals that leave the dataset as it was."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from neurocodec import (Dataset, WebDatasetLoader, append_datasets, create_shards_from_arrays,
                        create_webdataset_dataloader, make_split, read_split)
from neurocodec.cli import main
from neurocodec.dataset.versions import kept_versions
from neurocodec.errors import DatasetError, ShardError
from neurocodec.format import layout

sys.path.insert(0, str(Path(__file__).parent))
from test_window_loader import convert, numpy_of, rich_session  # noqa: E402


def digests(path: Path) -> dict[str, str]:
    """SHA-256 of every file at the top of a dataset directory."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir()) if p.is_file()}


def values(samples) -> list[dict]:
    return [{k: v for k, v in numpy_of(s).items()} for s in samples]


def same(a: list[dict], b: list[dict]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x.keys() != y.keys():
            return False
        for k in x:
            if isinstance(x[k], np.ndarray) and not np.array_equal(x[k], y[k]):
                return False
            if not isinstance(x[k], np.ndarray) and x[k] != y[k]:
                return False
    return True


@pytest.fixture(scope="module")
def sessions(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("append-sessions")
    return [rich_session(root / "a.nwb", t0=0.0, seconds=3.0, seed=1),
            rich_session(root / "b.nwb", t0=50.0, seconds=2.5, seed=2),
            rich_session(root / "c.nwb", t0=9.0, seconds=2.0, seed=3)]


@pytest.fixture(scope="module")
def appended(sessions, tmp_path_factory) -> dict:
    """A chunked dataset of sessions a and b with two splits, read before and after c is appended."""
    root = tmp_path_factory.mktemp("append")
    path = convert(root / "ds", sessions[:2], chunk_seconds=0.5)
    by_session = make_split(path, by="session", seed=3)
    by_time = make_split(path, by="time", fractions={"train": 0.6, "valid": 0.2, "test": 0.2}, name="time")
    before = {"files": digests(path), "manifest": (path / layout.MANIFEST_PATH).read_bytes(),
              "report": digests(path / layout.HOME)["conversion-report.json"],
              "samples": values(Dataset(path)), "train": values(WebDatasetLoader(path, split="train", shuffle=False)),
              "windows": values(WebDatasetLoader(path, shuffle=False, window_ms=300)),
              "sessions": by_session.sessions, "time_ranges": by_time.ranges}
    old_loader = create_webdataset_dataloader(path, batch_size=4, num_workers=2, shuffle=True, seed=1)
    convert(path, sessions[2:], chunk_seconds=0.5, append=True)
    direct = convert(root / "direct", sessions, chunk_seconds=0.5)
    return {"path": path, "before": before, "direct": direct, "old_loader": old_loader}


def test_old_shards_and_manifest_are_kept_byte_for_byte(appended):
    path, before = appended["path"], appended["before"]
    now, kept = digests(path), path / layout.HOME / "versions" / "1"
    assert {k: now[k] for k in before["files"]} == before["files"]  # the top: shards and indexes only
    assert digests(kept)["conversion-report.json"] == before["report"]  # this conversion's is new
    assert len([n for n in now if layout.is_shard_name(n)]) > len([n for n in before["files"] if layout.is_shard_name(n)])
    assert (kept / layout.MANIFEST).read_bytes() == before["manifest"]
    assert kept_versions(path) == [1]
    assert json.loads((path / layout.MANIFEST_PATH).read_text())["version"] == 2


def test_the_old_version_reads_exactly_its_samples(appended):
    path, before = appended["path"], appended["before"]
    with Dataset(path, version=1) as old:
        assert old.version == 1 and same(values(old), before["samples"])
    assert same(values(WebDatasetLoader(path, split="train", shuffle=False, version=1)), before["train"])
    assert same(values(WebDatasetLoader(path, shuffle=False, window_ms=300, version=1)), before["windows"])


def test_a_loader_made_before_the_append_keeps_reading_its_version(appended):
    """Its workers start after the append and open the version the loader chose."""
    loader = appended["old_loader"]
    keys = [k for batch in loader for k in batch["__key__"]]
    assert len(keys) == len(appended["before"]["samples"]) and len(set(keys)) == len(keys)
    assert loader.state_dict().get("dataset_version") is None  # version 1: the state keeps its old form


def test_the_new_version_equals_converting_every_session_at_once(appended):
    path, direct = appended["path"], appended["direct"]
    with Dataset(path) as ds, Dataset(direct) as expected:
        assert ds.version == 2 and len(ds) == len(expected)
        assert same(values(ds), values(expected))
        assert ds.manifest.extra["timeline"] == expected.manifest.extra["timeline"]
        assert ds.manifest.extra["sessions"] == expected.manifest.extra["sessions"]
    grid = dict(shuffle=False, window_ms=300)
    assert same(values(WebDatasetLoader(path, **grid)), values(WebDatasetLoader(direct, **grid)))


def test_splits_keep_existing_sessions_and_take_new_ones(appended):
    path, before = appended["path"], appended["before"]
    by_session, by_time = read_split(path), read_split(path, "time")
    assert len(by_session.sessions) == 3
    assert {k: by_session.sessions[k] for k in before["sessions"]} == before["sessions"]
    new = next(k for k in by_session.sessions if k not in before["sessions"])
    assert by_session.sessions[new] == by_session.rule.part_of(new)
    for part, ranges in before["time_ranges"].items():
        assert {k: by_time.ranges[part][k] for k in ranges} == ranges
    assert by_time.ranges["train"][new] == by_time.rule.time_ranges(9.0, 11.0)["train"]  # c: 2 s from t0 = 9
    assert read_split(path, version=1).sessions == before["sessions"]  # kept with version 1
    train = {(s["metadata"]["session"], s["metadata"]["start_time"])
             for s in WebDatasetLoader(path, split="train", shuffle=False)}
    old_train = {(s["metadata"]["session"], s["metadata"]["start_time"]) for s in before["train"]}
    assert old_train <= train and any(k == new for k, _ in train) == (by_session.sessions[new] == "train")


def test_a_state_resumes_only_on_its_version(appended):
    path = appended["path"]
    options = dict(batch_size=3, num_workers=0, shuffle=True, seed=4)
    full = [k for b in create_webdataset_dataloader(path, version=1, **options) for k in b["__key__"]]
    loader = create_webdataset_dataloader(path, version=1, **options)
    it = iter(loader)
    head = [k for _ in range(2) for k in next(it)["__key__"]]
    state = loader.state_dict()
    del it
    with pytest.raises(ValueError, match="pass version=1"):
        create_webdataset_dataloader(path, **options).load_state_dict(state)
    resumed = create_webdataset_dataloader(path, version=1, **{**options, "num_workers": 2})
    resumed.load_state_dict(state)
    assert head + [k for b in resumed for k in b["__key__"]] == full
    current = create_webdataset_dataloader(path, **options)
    assert current.state_dict()["dataset_version"] == 2
    with pytest.raises(ValueError, match="pass version=2"):
        create_webdataset_dataloader(path, version=1, **options).load_state_dict(current.state_dict())
    with pytest.raises(DatasetError, match="versions 1 to 2"):
        Dataset(path, version=3)


def test_refusals_leave_the_dataset_as_it_was(sessions, appended, tmp_path):
    path = appended["path"]
    files = digests(path)
    with pytest.raises(DatasetError, match="already in the dataset"):
        convert(path, sessions[:1], chunk_seconds=0.5, append=True)
    with pytest.raises(DatasetError, match="differs|timeline"):
        convert(path, sessions[2:], sequence_length=30, overlap=0.0, append=True)
    other = create_shards_from_arrays(tmp_path / "arrays", {"lfp": np.zeros((3, 5, 4), np.float32)})["output_dir"]
    with pytest.raises(DatasetError, match="fields"):
        append_datasets(path, [other])
    assert digests(path) == files and kept_versions(path) == [1]


def arrays(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"lfp": rng.normal(size=(n, 8, 3)).astype(np.float32), "behavior": rng.random((n, 8, 2)).astype(np.float32)}


def test_writer_appends_versions_and_a_failed_append_changes_nothing(tmp_path):
    path = tmp_path / "ds"
    parts = [arrays(7, 0), arrays(5, 1), arrays(9, 2)]
    summaries = [create_shards_from_arrays(path, part, shard_size=4, append=True, fsync=False) for part in parts]
    assert [s.get("version", 1) for s in summaries] == [1, 2, 3] and summaries[-1]["total_samples"] == 21
    whole = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    for version, count in ((1, 7), (2, 12), (3, 21)):
        with Dataset(path, version=version) as ds:
            assert len(ds) == count and ds.version == version
            assert all(np.array_equal(ds[i]["lfp"], whole["lfp"][i]) for i in range(count))
            assert ds[count - 1]["__key__"] == layout.sample_key(count - 1)
    assert kept_versions(path) == [1, 2]
    # A source with a damaged shard: the copy fails half-way; the dataset stays at version 3.
    bad = tmp_path / "bad"
    create_shards_from_arrays(bad, arrays(8, 3), shard_size=4, fsync=False)
    shard = bad / "shard_000001.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    files = digests(path)
    with pytest.raises(ShardError):
        append_datasets(path, [bad], fsync=False)
    assert Dataset(path).version == 3 and {k: v for k, v in digests(path).items() if k in files} == files
    good = create_shards_from_arrays(tmp_path / "good", arrays(2, 4), fsync=False)["output_dir"]
    assert append_datasets(path, [good], fsync=False).version == 4
    assert sorted(n for n in os.listdir(path) if layout.is_shard_name(n)) == \
        [layout.shard_name(i) for i in range(len(Dataset(path).shards))]  # the failed copy's shards are gone


def test_overwrite_drops_versions_and_a_stale_split_is_refused(tmp_path):
    path = tmp_path / "ds"
    create_shards_from_arrays(path, arrays(6, 0), fsync=False,
                              metadata=[{"session": "s", "start_time": i, "stop_time": i + 1} for i in range(6)])
    make_split(path, by="time", fractions={"train": 0.5, "test": 0.5})
    create_shards_from_arrays(path, arrays(4, 1), fsync=False, append=True,
                              metadata=[{"session": "t", "start_time": i, "stop_time": i + 1} for i in range(4)])
    assert len(WebDatasetLoader(path, split="train", shuffle=False)) > len(WebDatasetLoader(
        path, split="train", shuffle=False, version=1))
    create_shards_from_arrays(path, arrays(3, 2), fsync=False, overwrite=True,
                              metadata=[{"session": "u", "start_time": i, "stop_time": i + 1} for i in range(3)])
    assert not (path / layout.HOME / "versions").exists() and Dataset(path).version == 1
    with pytest.raises(DatasetError, match="--refresh"):
        WebDatasetLoader(path, split="train")


def test_command_line(tmp_path, capsys):
    npz = tmp_path / "more.npz"
    np.savez(npz, **arrays(5, 7))
    first = tmp_path / "first.npz"
    np.savez(first, **arrays(6, 8))
    out = tmp_path / "ds"
    assert main(["convert", "--input", str(first), "--output", str(out), "--no-progress"]) == 0
    assert main(["convert", "--input", str(npz), "--output", str(out), "--append", "--no-progress"]) == 0
    assert "now version 2 with 11 samples" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    assert "version: 2" in capsys.readouterr().out
    assert main(["convert", "--input", str(npz), "--output", str(out), "--append", "--overwrite"]) != 0
    assert "--append" in capsys.readouterr().err
    assert main(["split", str(out), "--refresh"]) == 0
    assert "refreshed 0 split(s)" in capsys.readouterr().out


def test_a_crafted_earlier_version_is_refused(tmp_path):
    path = tmp_path / "ds"
    for seed in (0, 1):
        create_shards_from_arrays(path, arrays(5, seed), shard_size=2, fsync=False, append=True)
    kept = path / layout.HOME / "versions" / "1" / layout.MANIFEST
    other = create_shards_from_arrays(tmp_path / "other", arrays(5, 9), shard_size=2, fsync=False)["output_dir"]
    kept.write_bytes((Path(other) / layout.MANIFEST_PATH).read_bytes())  # version 1 of another dataset
    with pytest.raises(DatasetError, match="not version 1 of this dataset"):
        Dataset(path, version=1)
    kept.write_text("{not json")
    with pytest.raises(DatasetError, match="version 1 cannot be read.*not valid JSON"):
        WebDatasetLoader(path, version=1)
    with pytest.raises(DatasetError, match="versions 1 to 2"):
        Dataset(path, version=0)


@pytest.mark.parametrize("number", [0, -1, "2", 2.0, 10**7, True])
def test_a_manifest_version_that_is_not_a_number_is_refused(tmp_path, number):
    path = Path(create_shards_from_arrays(tmp_path / "ds", arrays(2, 0), fsync=False)["output_dir"])
    doc = json.loads((path / layout.MANIFEST_PATH).read_text())
    doc["version"] = number
    (path / layout.MANIFEST_PATH).write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match="version must be an integer"):
        Dataset(path)
