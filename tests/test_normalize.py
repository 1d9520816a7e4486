"""normalize= on the loaders (issue 16, point 3): (x - mean) / std per session and channel,
exactly, in the main process and in DataLoader workers, before the user's transform; pooled
numbers for sessions without their own; load-time windows; a mix scaled dataset by dataset;
statistics that are missing, stale or of the wrong part refused with the command to run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from neurocodec import (Dataset, DatasetError, Normalize, RandomAccessWebDataset, WebDatasetLoader, WebDatasetWriter,
                        compute_stats, create_webdataset_dataloader, make_split)
from neurocodec.dataset.splits import SplitRule
from neurocodec.plugin import SpikeEvents

sys.path.insert(0, str(Path(__file__).parent))
from test_stats import RATE, WINDOW, signals, write_windows  # noqa: E402
from test_window_loader import convert, rich_session  # noqa: E402

SCALED = ("signal", "speed", "counts", "frames")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = write_windows(tmp_path_factory.mktemp("normalize") / "ds",
                         {"s1": (0.0, signals(1, 400, 3)), "s2": (50.0, signals(2, 300, 3))})
    make_split(path, by="time", fractions={"train": 0.6, "test": 0.4})
    compute_stats(path, "train")
    return path


def raw_samples(path: Path) -> dict[str, dict]:
    with Dataset(path) as ds:
        return {s["__key__"]: s for s in ds}


def rows(batch: dict) -> list[dict]:
    """The samples of a collated batch, as numpy."""
    count = len(batch["__key__"])
    return [{k: (v[i].numpy() if isinstance(v, torch.Tensor) else v[i]) for k, v in batch.items()} for i in range(count)]


def scaled(raw: np.ndarray, summary) -> np.ndarray:
    """(x - mean) / std, a std of 0 counting as 1 (a unit that never fires is left at 0)."""
    return ((raw - summary.mean) / np.where(summary.std > 0, summary.std, 1.0)).astype(np.float32)


def check(sample: dict, raw: dict, stats, session: str | None, factor: float = 1.0) -> None:
    for name in SCALED:
        want = scaled(raw[name], stats.summary(name, session)) * np.float32(factor)
        assert sample[name].dtype == np.float32
        np.testing.assert_array_equal(sample[name], want)  # NaN where the raw value is NaN
    assert np.array_equal(sample["mask"], raw["mask"]) and sample["label"] == raw["label"]


@pytest.mark.parametrize("workers", [0, 2])
def test_each_session_is_scaled_by_its_own_numbers(dataset, workers):
    raw = raw_samples(dataset)
    seen = 0
    for part in ("train", "test"):
        loader = create_webdataset_dataloader(dataset, batch_size=5, num_workers=workers, split=part,
                                              normalize="session", seed=3)
        assert loader.stats.split == "default" and loader.stats.part == "train"
        for batch in loader:
            for sample in rows(batch):
                mine = raw[sample["__key__"]]
                check(sample, mine, loader.stats, mine["metadata"]["session"])
                seen += 1
    assert seen > 20


def twice(sample: dict, rng: np.random.Generator) -> dict:
    return {**sample, **{k: sample[k] * 2 for k in SCALED}}


def test_pooled_numbers_and_the_users_transform_after(dataset):
    raw = raw_samples(dataset)
    ds = RandomAccessWebDataset(dataset, split="test", normalize="dataset", transform=twice, tensors=False)
    assert len(ds) > 0 and ds.stats.part == "train"
    for i in range(len(ds)):
        check(ds[i], raw[ds[i]["__key__"]], ds.stats, None, factor=2.0)
    for sample in WebDatasetLoader(dataset, split="train", normalize="dataset", transform=twice):
        check({k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in sample.items()},
              raw[sample["__key__"]], ds.stats, None, factor=2.0)


def test_a_session_without_numbers_of_its_own_is_scaled_by_the_pooled_ones(tmp_path):
    sessions = {f"k{i}": (10.0 * i, signals(i + 1, 80, 2)) for i in range(4)}
    path = write_windows(tmp_path / "ds", sessions)
    seed = next(s for s in range(100) if len({SplitRule.of("session", {"train": 0.5, "test": 0.5}, s, None, None,
                                                          0.0).part_of(k) for k in sessions}) == 2)
    split = make_split(path, by="session", fractions={"train": 0.5, "test": 0.5}, seed=seed)
    stats = compute_stats(path, "train")
    assert set(stats.fields["signal"].sessions) == {k for k, p in split.sessions.items() if p == "train"}
    raw = raw_samples(path)
    held = list(WebDatasetLoader(path, split="test", normalize="session", shuffle=False))
    assert held
    for sample in held:
        assert sample["metadata"]["session"] not in stats.fields["signal"].sessions
        check({k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in sample.items()},
              raw[sample["__key__"]], stats, None)
    out = Normalize(stats, fields="signal")(raw[held[0]["__key__"]], np.random.default_rng(0))
    assert out["speed"] is raw[held[0]["__key__"]]["speed"]  # only the fields asked for
    with pytest.raises(ValueError, match="mode must be one of"):
        Normalize(stats, mode="channel")


def test_windows_cut_at_load_time_are_scaled_and_spike_events_left_alone(tmp_path):
    path = convert(tmp_path / "chunks", [rich_session(tmp_path / "a.nwb", t0=0.0, seconds=3.0, seed=4)],
                   chunk_seconds=0.5)
    stats = compute_stats(path, None)
    plain = list(WebDatasetLoader(path, window_ms=250, seed=1))
    normed = list(WebDatasetLoader(path, window_ms=250, seed=1, normalize="session"))
    assert len(plain) == len(normed) > 5
    for a, b in zip(plain, normed):
        session = a["metadata"]["session"]
        for name in ("lfp", "spikes", "behavior"):
            np.testing.assert_array_equal(b[name].numpy(), scaled(a[name].numpy(), stats.summary(name, session)))
        assert torch.equal(a["spikes_observed"], b["spikes_observed"])
    events = next(iter(WebDatasetLoader(path, window_ms=250, normalize="session", decode={"spikes": {"as": "events"}})))
    assert isinstance(events["spikes"], SpikeEvents) and events["lfp"].dtype == torch.float32
    with pytest.raises(ValueError, match="makes field 'lfp' <i2"):
        WebDatasetLoader(path, normalize="session", decode={"lfp": {"raw": True}})
    with pytest.raises(ValueError, match="makes field 'spikes'"):
        WebDatasetLoader(path, normalize="session", decode={"spikes": {"bin_size_ms": 20}})


def test_a_mix_scales_each_dataset_by_its_own_numbers(tmp_path):
    a = write_windows(tmp_path / "a", {"a1": (0.0, signals(1, 120, 3))})
    b_fields = {k: v for k, v in signals(7, 100, 3).items() if k != "frames"}  # b has no frames
    b = write_windows(tmp_path / "b", {"b1": (0.0, b_fields)})
    with pytest.raises(DatasetError, match=f"neurocodec stats {a} --all"):
        create_webdataset_dataloader([a, b], batch_size=4, num_workers=0, normalize="session")
    stats = {"a1": compute_stats(a, None), "b1": compute_stats(b, None)}
    raw = {(s["metadata"]["session"], s["__key__"]): s for p in (a, b) for s in raw_samples(p).values()}
    loader = create_webdataset_dataloader([a, b], batch_size=4, num_workers=0, normalize="session", seed=2)
    assert [s.total_samples for s in loader.stats] == [5, 4]
    for batch in loader:
        assert batch["frames"].dtype == torch.float32
        for sample in rows(batch):
            session = sample["metadata"]["session"]
            mine = raw[(session, sample["__key__"])]
            for name in ("signal", "speed", "counts"):
                np.testing.assert_array_equal(sample[name], scaled(mine[name], stats[session].summary(name, session)))
            if session == "b1":
                assert not sample["frames_present"] and not sample["frames"].any()


def test_missing_stale_or_foreign_statistics_are_refused_with_the_command(tmp_path):
    path = write_windows(tmp_path / "ds", {"s1": (0.0, signals(1, 120, 2))})
    make_split(path, by="time", fractions={"train": 0.7, "test": 0.3})
    with pytest.raises(DatasetError, match=f"none: make them with `neurocodec stats {path} --split train`"):
        WebDatasetLoader(path, split="test", normalize="session")
    with pytest.raises(DatasetError, match="--all"):
        WebDatasetLoader(path, normalize="session")
    compute_stats(path, "default/test")
    with pytest.raises(DatasetError, match="made from part 'test' .* not from the first .*--split train --overwrite"):
        WebDatasetLoader(path, split="test", normalize="session")
    compute_stats(path, "train", overwrite=True)
    make_split(path, by="time", fractions={"train": 0.5, "test": 0.5}, overwrite=True)
    with pytest.raises(DatasetError, match="another assignment of split 'default'"):
        WebDatasetLoader(path, split="train", normalize="session")
    compute_stats(path, "train", overwrite=True)
    WebDatasetLoader(path, split="train", normalize="session")  # current again
    with WebDatasetWriter(path, shard_size=7, fsync=False, append=True) as writer:  # the manifest changes
        writer.write_sample({k: v[:WINDOW] for k, v in signals(9, WINDOW, 2).items()} | {"label": np.int64(0)},
                            metadata={"session": "s9", "subject_id": "s9", "start_time": 0.0,
                                      "stop_time": WINDOW / RATE})
    new = WebDatasetLoader(path, split="train", normalize="session")  # the append computed them again
    old = WebDatasetLoader(path, split="train", normalize="session", version=1)  # the version they were made for
    assert new.stats.total_samples == len(new) and old.stats.total_samples == len(old)
    assert new.stats.manifest_sha256 != old.stats.manifest_sha256  # each made for its own version
    write_windows(path, {"s1": (0.0, signals(2, 120, 2))})  # overwritten: a new dataset
    with pytest.raises(DatasetError, match="another state of the dataset"):
        WebDatasetLoader(path, split="train", normalize="session")
    with pytest.raises(ValueError, match="normalize must be None or one of"):
        WebDatasetLoader(path, normalize="global")
