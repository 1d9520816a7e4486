"""Splits stored with the data (issue 16, point 1): assignments by session, subject or time that
every process computes alike, no leakage between parts for fixed, overlapping and load-time
jittered windows, loaders reading one part (with workers, resumed), and errors in words."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neurocodec import WebDatasetLoader, create_webdataset_dataloader, make_split, read_split
from neurocodec.dataset.splits import SplitRule, unit_hash
from neurocodec.errors import DatasetError

sys.path.insert(0, str(Path(__file__).parent))
from test_window_loader import convert, rich_session  # noqa: E402


@pytest.fixture(scope="module")
def sessions(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("split-sessions")
    return [rich_session(root / "a.nwb", t0=0.0, seconds=20.0, seed=1),
            rich_session(root / "b.nwb", t0=100.25, seconds=15.0, seed=2),
            rich_session(root / "c.nwb", t0=7.0, seconds=12.0, seed=3)]


@pytest.fixture(scope="module")
def datasets(sessions, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("split-datasets")
    return {"chunks": convert(root / "chunks", sessions, chunk_seconds=0.5),
            "fixed": convert(root / "fixed", sessions, sequence_length=30, overlap=0.0),
            "overlapping": convert(root / "overlapping", sessions, sequence_length=40, overlap=0.5)}


def spans(loader) -> dict[str, list[tuple[str, float, float]]]:
    return [(m["session"], m["start_time"], m["stop_time"]) for m in (s["metadata"] for s in loader)]


def overlapping_pairs(a, b) -> list:
    return [(x, y) for x in a for y in b if x[0] == y[0] and x[1] < y[2] - 1e-9 and y[1] < x[2] - 1e-9]


@pytest.mark.parametrize("kind", ["fixed", "overlapping", "chunks"])
def test_time_split_has_no_leakage(datasets, kind):
    path = datasets[kind]
    split = make_split(path, by="time", fractions={"train": 0.7, "valid": 0.15, "test": 0.15}, overwrite=True)
    guard = split.rule.guard_s
    assert guard >= (0.5 if kind == "chunks" else 0.3 if kind == "fixed" else 0.4) - 1e-9
    parts = {p: spans(WebDatasetLoader(path, split=p, shuffle=False)) for p in ("train", "valid", "test")}
    assert all(parts.values())  # every part holds stored windows
    for p, q in (("train", "valid"), ("train", "test"), ("valid", "test")):
        assert not overlapping_pairs(parts[p], parts[q]), (p, q)
    ranges = split.ranges
    for p, windows in parts.items():  # every window wholly inside its part's ranges
        assert all(any(a - 1e-9 <= s and e <= b + 1e-9 for a, b in ranges[p][k]) for k, s, e in windows)
    if kind == "chunks":  # jittered windows of several lengths, over epochs
        for window_ms in (100, 370, 500):
            seen = {p: [] for p in parts}
            for p in parts:
                loader = WebDatasetLoader(path, split=p, window_ms=window_ms, seed=5)
                for _ in range(3):
                    seen[p] += spans(loader)
            assert all(seen.values())
            for p, q in (("train", "valid"), ("train", "test"), ("valid", "test")):
                assert not overlapping_pairs(seen[p], seen[q]), (window_ms, p, q)
            # the guard band: at least a window between parts, on each side of a cut
            for k in {w[0] for w in seen["valid"]}:
                train_end = max(e for s_, _, e in seen["train"] if s_ == k)
                valid_start = min(s for s_, s, _ in seen["valid"] if s_ == k)
                assert valid_start - train_end >= guard - 1e-9


@pytest.mark.parametrize("by", ["session", "subject"])
def test_whole_sessions_go_to_one_part(datasets, by):
    path = datasets["overlapping"]
    split = make_split(path, by=by, seed=7, name=f"by-{by}", overwrite=True)
    rule = SplitRule.of(by, None, 7, None, None, 0.0)
    with open(path / ".neurocodec" / "dataset_metadata.json") as f:
        keys = sorted(json.load(f)["extra"]["sessions"])
    assert sorted(split.sessions) == keys
    loaders = {p: spans(WebDatasetLoader(path, split=f"by-{by}/{p}", shuffle=False)) for p in split.rule.names}
    for p, windows in loaders.items():
        assert {k for k, _, _ in windows} == {k for k, part in split.sessions.items() if part == p}
    assert sum(len(w) for w in loaders.values()) == len(WebDatasetLoader(path))
    if by == "session":
        assert split.sessions == {k: rule.part_of(k) for k in keys}


def test_assignment_depends_only_on_the_id_and_seed():
    rule = SplitRule.of("session", {"train": 0.6, "valid": 0.2, "test": 0.2}, 11, None, None, 0.0)
    ids = [f"subject-{i}" for i in range(20_000)]
    counts = {p: 0 for p in rule.names}
    for i in ids:
        counts[rule.part_of(i)] += 1
    for p, f in rule.fractions:  # within 5 standard deviations of the fraction
        assert abs(counts[p] - f * len(ids)) < 5 * (len(ids) * f * (1 - f)) ** 0.5
    folds = [SplitRule.of("subject", None, 3, 5, k, 0.0) for k in range(5)]
    for i in ids[:2000]:  # k-fold: every id held out in exactly one fold
        assert sum(f.part_of(i) == "test" for f in folds) == 1
    assert unit_hash("x", 1) == unit_hash("x", 1) != unit_hash("x", 2)
    assert rule.part_of("subject-5") == SplitRule.of("session", {"train": 0.6, "valid": 0.2, "test": 0.2}, 11,
                                                      None, None, 0.0).part_of("subject-5")


@pytest.mark.multiprocess
def test_the_same_file_in_another_process(datasets, tmp_path):
    path = datasets["fixed"]
    make_split(path, by="subject", seed=2, name="mine", overwrite=True)
    code = ("import sys; from neurocodec import make_split; "
            "make_split(sys.argv[1], by='subject', seed=2, name='theirs', overwrite=True)")
    for hash_seed in ("1", "4242"):
        subprocess.run([sys.executable, "-c", code, str(path)], check=True,
                       env={**os.environ, "PYTHONHASHSEED": hash_seed})
        mine = json.loads((path / ".neurocodec" / "splits" / "mine.json").read_text())
        theirs = json.loads((path / ".neurocodec" / "splits" / "theirs.json").read_text())
        mine.pop("name"), theirs.pop("name")
        assert mine == theirs


def test_sessions_keep_their_part_when_others_are_added(sessions, tmp_path):
    small = convert(tmp_path / "small", sessions[:2], sequence_length=30, overlap=0.0)
    large = convert(tmp_path / "large", sessions, sequence_length=30, overlap=0.0)
    before = make_split(small, by="session", seed=1).sessions
    after = make_split(large, by="session", seed=1).sessions
    assert len(after) == 3 and {k: after[k] for k in before} == before


@pytest.mark.multiprocess
def test_a_part_through_workers_resumes_exactly(datasets):
    path = datasets["overlapping"]
    make_split(path, by="time", name="resume", overwrite=True)

    def make(workers):
        return create_webdataset_dataloader(path, split="resume/train", batch_size=4, num_workers=workers, seed=3,
                                            buffer_size=16)

    reference = [k for batch in make(2) for k in batch["__key__"]]
    assert len(reference) == len(set(reference)) == len(read_split(path, "resume").sample_ids("train"))
    first = make(0)
    iterator = iter(first)
    taken = [k for _ in range(3) for k in next(iterator)["__key__"]]
    resumed = make(2)
    resumed.load_state_dict(first.state_dict())
    assert taken + [k for batch in resumed for k in batch["__key__"]] == reference
    other = create_webdataset_dataloader(path, split="resume/test", batch_size=4, num_workers=0, seed=3,
                                         buffer_size=16)
    with pytest.raises(ValueError, match="split"):
        other.load_state_dict(first.state_dict())


def test_errors_in_words(datasets, tmp_path):
    path = datasets["fixed"]
    with pytest.raises(DatasetError, match="no split 'nothing'"):
        WebDatasetLoader(path, split="nothing/train")
    make_split(path, name="words", overwrite=True)
    with pytest.raises(ValueError, match=r"has parts \['train', 'valid', 'test'\], not 'holdout'"):
        WebDatasetLoader(path, split="words/holdout")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make_split(path, name="words")
    with pytest.raises(ValueError, match="add up to 1"):
        make_split(path, name="bad", fractions={"train": 0.5, "test": 0.4})
    with pytest.raises(ValueError, match="by must be one of"):
        make_split(path, name="bad", by="file")
    with pytest.raises(ValueError, match="shorter than a window"):
        make_split(path, name="bad", by="time", guard_s=0.1)
    with pytest.raises(ValueError, match="fold"):
        make_split(path, name="bad", folds=5, fold=5)
    with pytest.raises(ValueError, match="split must be"):
        WebDatasetLoader(path, split="a/b/c")
    target = path / ".neurocodec" / "splits" / "words.json"
    doc = json.loads(target.read_text())
    doc["parts"]["train"]["samples"] = [[5, 3]]
    target.write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match="not a valid split file: part 'train' has sample runs"):
        WebDatasetLoader(path, split="words/train")
    target.write_text("{not json")
    with pytest.raises(DatasetError, match="not a valid split file"):
        WebDatasetLoader(path, split="words/train")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neurocodec", "split", *args], capture_output=True, text=True)


@pytest.mark.multiprocess
def test_the_command_line_speaks_flags(datasets):
    path = str(datasets["overlapping"])
    done = run_cli(path, "--by", "time", "--fractions", "train=0.6,valid=0.2,test=0.2", "--name", "cli",
                   "--overwrite")
    assert done.returncode == 0, done.stderr
    assert "train:" in done.stdout and "splits/cli.json" in done.stdout
    assert read_split(path, "cli").rule.fractions == (("train", 0.6), ("valid", 0.2), ("test", 0.2))
    for args, words in [(("--name", "cli"), "pass --overwrite"),
                        (("--by", "time", "--guard-s", "0.01", "--name", "g"), "--guard-s 0.01 is shorter"),
                        (("--fractions", "train=0.5,test=0.4", "--name", "f"), "--fractions must add up to 1"),
                        (("--fractions", "train:1", "--name", "f"), "--fractions train:1: give PART=FRACTION"),
                        (("--folds", "3", "--fold", "3", "--name", "k"), "--folds must be an integer >= 2 and --fold")]:
        done = run_cli(path, *args)
        assert done.returncode == 1 and words in done.stderr and "=True" not in done.stderr, (args, done.stderr)


def test_random_access_reads_a_part(datasets):
    from neurocodec import RandomAccessWebDataset

    path = datasets["chunks"]
    make_split(path, by="time", name="ra", overwrite=True)
    for kwargs in ({}, {"window_ms": 300}):
        part = RandomAccessWebDataset(path, split="ra/valid", **kwargs)
        loader = WebDatasetLoader(path, split="ra/valid", shuffle=False, **kwargs)
        keys = [s["__key__"] for s in loader]
        assert len(part) == len(keys) > 0 and [part[i]["__key__"] for i in range(len(part))] == keys
        with pytest.raises(IndexError):
            part[len(part)]
