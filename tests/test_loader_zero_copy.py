"""Tensors handed out without a copy: what the user may do with them, and what they cannot change.

`WebDatasetLoader`, `ResumableWebDatasetLoader` and `RandomAccessWebDataset` read each sample
into a buffer of its own and make its arrays tensors over that buffer (no copy). Writing into
them must change nothing else: not the shard file, not another sample, not the same sample read
again. Values something else keeps (windows cut from cached chunks) stay copies: see
tests/test_window_loader.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

import neurocodec.loader.batch as batch_module
from neurocodec import (
    Dataset, RandomAccessWebDataset, ResumableWebDatasetLoader, WebDatasetLoader, WebDatasetWriter,
)

N = 24


def values(i: int) -> dict[str, np.ndarray]:
    return {"spikes": np.arange(12, dtype=np.float32).reshape(3, 4) + i,
            "behavior": np.full((3, 2), i, dtype=np.float64)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("zero_copy") / "ds"
    with WebDatasetWriter(path, shard_size=10, fsync=False) as writer:
        for i in range(N):
            writer.write_sample(values(i), metadata={"id": i})
    return path


def shard_digests(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.glob("*.tar"))}


def scribble(sample: dict) -> None:
    """What a training loop may do: change its inputs in place."""
    for name in ("spikes", "behavior"):
        sample[name].fill_(-7)


def check(sample: dict) -> None:
    i = sample["metadata"]["id"]
    for name, expected in values(i).items():
        assert torch.equal(sample[name], torch.from_numpy(expected)), (i, name)


def buffer_of(array: np.ndarray) -> object:
    """The object whose memory `array` views (itself when it owns its data)."""
    base = array
    while True:
        inner = base.base
        if isinstance(inner, memoryview):
            inner = inner.obj
        if inner is None:
            return base
        base = inner


@pytest.mark.parametrize("make", [
    lambda path, tmp: WebDatasetLoader(path, shuffle=False),
    lambda path, tmp: WebDatasetLoader(path, shuffle=True, seed=3, buffer_size=8),
    lambda path, tmp: ResumableWebDatasetLoader(path, tmp / "ckpt.json", checkpoint_interval=5, shuffle=False),
], ids=["in order", "shuffled", "resumable"])
def test_samples_are_tensors_over_their_own_read(dataset: Path, tmp_path: Path, make, monkeypatch) -> None:
    given: list[np.ndarray] = []
    real = torch.from_numpy
    monkeypatch.setattr(batch_module, "_torch_from_numpy", lambda a: given.append(a) or real(a))
    before = shard_digests(dataset)
    loader = make(dataset, tmp_path)
    for epoch in range(2):  # the second epoch reads every sample again after the first was scribbled on
        seen = []
        for sample in loader:
            check(sample)
            seen.append(sample["metadata"]["id"])
            scribble(sample)
        assert sorted(seen) == list(range(N)), epoch
    # Both arrays of a sample view one read buffer: handed over as they were decoded, not copied.
    assert len(given) == 4 * N
    for spikes, behavior in zip(given[0::2], given[1::2]):
        assert spikes.flags.writeable and behavior.flags.writeable
        assert buffer_of(spikes) is buffer_of(behavior) and isinstance(buffer_of(spikes), np.ndarray)
    assert shard_digests(dataset) == before
    with Dataset(dataset) as ds:
        for i in range(N):
            assert np.array_equal(ds[i]["spikes"], values(i)["spikes"])
            assert not ds[i]["spikes"].flags.writeable  # Dataset's own arrays stay read-only


def test_random_access_samples_are_the_callers_own(dataset: Path) -> None:
    ds = RandomAccessWebDataset(dataset)
    for i in (0, 13, -1):
        first = ds[i]
        check(first)
        scribble(first)
        check(ds[i])  # read again: unchanged
    raw = RandomAccessWebDataset(dataset, tensors=False)[5]
    assert raw["spikes"].flags.writeable and buffer_of(raw["spikes"]) is buffer_of(raw["behavior"])


def test_arrays_kept_elsewhere_are_copied() -> None:
    """A read-only array is one something else keeps: it becomes a tensor of its own."""
    kept = np.arange(6, dtype=np.int32)
    kept.flags.writeable = False
    tensor = batch_module.to_tensor(kept)
    tensor.fill_(0)
    assert kept.tolist() == [0, 1, 2, 3, 4, 5]
    own = np.arange(3.0)
    batch_module.to_tensor(own).fill_(1.0)
    assert own.tolist() == [1.0, 1.0, 1.0]
