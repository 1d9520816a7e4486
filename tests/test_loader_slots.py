"""Batches handed over through reused shared-memory slots (neurocodec/loader/slots.py).

What a user must be able to rely on: every batch is exactly what in-process collation gives
(fixed, padded and custom-collated fields alike); a batch the training loop keeps is never
written over, however many it keeps; changing a batch in place changes no other batch; fork,
spawn and forkserver workers all work. And the slots must actually be used, or none of this is tested.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from neurocodec import WebDatasetWriter, create_webdataset_dataloader
from neurocodec.loader.slots import MAX_POOL_BYTES, pool_for

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(180)]
N = 60


def sample(i: int) -> dict[str, np.ndarray]:
    units = 2 + i % 5                                       # variable axis: padded, with a mask
    return {"spikes": (np.arange(4 * units, dtype=np.int16).reshape(4, units) * (i + 1)) % 251,
            "lfp": np.full((3, 8), i, dtype=np.float64) + np.arange(8) / 8,
            "flags": (np.arange(5) + i) % 2 == 0}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slots") / "ds"
    with WebDatasetWriter(path, shard_size=16, fsync=False) as writer:
        for i in range(N):
            writer.write_sample(sample(i), metadata={"id": i})
    return path


def loader(path: Path, workers: int, **kwargs: Any):
    return create_webdataset_dataloader(path, batch_size=7, num_workers=workers, shuffle=True, seed=5,
                                        buffer_size=20, **kwargs)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def in_pool(tensor: torch.Tensor, pool: Any) -> bool:
    start = pool.memory.data_ptr()
    return start <= tensor.data_ptr() < start + pool.memory.numel()


@pytest.fixture(scope="module")
def reference(dataset: Path) -> list[dict[str, Any]]:
    """The batches collated in this process (no slots, no workers)."""
    return [{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in b.items()}
            for b in loader(dataset, 0)]


@pytest.mark.parametrize("context", ["fork", "spawn", "forkserver"])
def test_batches_are_exact_and_come_through_the_slots(dataset: Path, reference: list, context: str) -> None:
    it = loader(dataset, 2, multiprocessing_context=context)
    it.build_while_workers_start = False     # the workers build every batch but the first
    slotted = 0
    for k, batch in enumerate(it):
        assert set(batch) == {"spikes", "spikes_mask", "lfp", "flags", "metadata", "__key__"}
        assert same(batch, reference[k]), k
        pool = it.dataset.pool                # None for batch 0, built before the workers start
        slotted += pool is not None and all(in_pool(batch[name], pool)
                                            for name in ("spikes", "spikes_mask", "lfp", "flags"))
        del batch
    assert k == len(reference) - 1
    assert slotted >= len(reference) - 2     # freed batches hand their slots back to the workers


def test_batches_kept_by_the_training_loop_are_never_written_over(dataset: Path, reference: list) -> None:
    kept = list(loader(dataset, 2))          # more batches than slots: the rest take torch's path
    assert len(kept) == len(reference)
    for batch, expected in zip(kept, reference):
        assert same(batch, expected)


def test_changing_a_batch_in_place_changes_no_other_batch(dataset: Path, reference: list) -> None:
    for k, batch in enumerate(loader(dataset, 2)):
        assert same(batch, reference[k]), k
        for name in ("spikes", "spikes_mask", "lfp", "flags"):
            batch[name].fill_(1)             # a training loop normalising its inputs in place


def test_a_custom_collate_result_comes_through_exactly(dataset: Path) -> None:
    def collate(samples: list[dict[str, Any]]) -> tuple:
        lfp = torch.stack([s["lfp"] for s in samples]).float()
        return lfp, [s["metadata"]["id"] for s in samples], {"sum": lfp.sum(dim=(1, 2))}

    expected = list(loader(dataset, 0, collate_fn=collate))
    got = list(loader(dataset, 2, collate_fn=collate))
    assert len(got) == len(expected) and all(same(a, b) for a, b in zip(got, expected))


def test_one_tensor_twice_in_a_batch_arrives_as_one(dataset: Path) -> None:
    def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
        lfp = torch.stack([s["lfp"] for s in samples])
        return {"a": lfp, "b": lfp, "ids": [s["metadata"]["id"] for s in samples]}

    for k, batch in enumerate(loader(dataset, 2, collate_fn=collate)):
        assert batch["a"].data_ptr() == batch["b"].data_ptr() and torch.equal(batch["a"], batch["b"])
    assert k > 3


def test_batches_larger_than_a_slot_still_arrive_exactly(tmp_path: Path) -> None:
    # Padding both axes of (9, 1) and (1, 9) values makes a batch bigger than the manifest's
    # per-sample sizes predict, so part of it takes torch's path.
    path = tmp_path / "ds"
    with WebDatasetWriter(path, shard_size=8, fsync=False) as writer:
        for i in range(24):
            shape = (9, 1) if i % 2 else (1, 9)
            writer.write_sample({"grid": np.full(shape, i, dtype=np.int64)}, metadata={"id": i})
    expected = list(create_webdataset_dataloader(path, batch_size=6, num_workers=0, seed=1))
    got = list(create_webdataset_dataloader(path, batch_size=6, num_workers=2, seed=1))
    assert len(got) == len(expected) and all(same(a, b) for a, b in zip(got, expected))
    assert tuple(got[0]["grid"].shape) == (6, 9, 9)


def test_no_pool_without_workers_prefetch_or_room() -> None:
    assert pool_for(0, 2, 2, "fork") is None
    assert pool_for(1000, 0, 2, "fork") is None
    assert pool_for(1000, 2, 0, "fork") is None
    assert pool_for(MAX_POOL_BYTES, 2, 2, "fork") is None
    pool = pool_for(1000, 2, 2, "fork")
    assert pool is not None and pool.memory.numel() == 2 * 3 * 1024 and pool.busy.tolist() == [0] * 6


def test_a_process_forked_while_batches_are_held_never_frees_their_slots(dataset: Path, reference: list) -> None:
    """A validation loader's workers fork from a training process that holds training batches:
    whatever dies in them must not hand those batches' slots back to the training workers."""
    import gc
    import os

    training = loader(dataset, 2)
    training.build_while_workers_start = False
    it = iter(training)
    next(it)
    held = next(it)                          # a batch in a slot of the pool
    assert in_pool(held["lfp"], training.dataset.pool)
    next(it)                                 # the loader itself no longer refers to `held`
    pid = os.fork()
    if pid == 0:                             # the child frees the batches it inherited
        held = None
        gc.collect()
        os._exit(0)
    os.waitpid(pid, 0)
    rest = list(it)                          # the workers go on filling the slots they may use
    assert len(rest) == len(reference) - 3
    assert same(held, reference[1])          # never written over
