"""Loaders in the loops frameworks run: stopped after `len(loader)` without exhausting the
iterator (Lightning, islice), torch's DataLoader options on create_webdataset_dataloader
(persistent_workers, generator, in_order, pin_memory_device), WebDatasetLoader inside a plain
DataLoader with workers, and inside torchdata's StatefulDataLoader. Every stream is checked
against the main process's order of each epoch, read by WebDatasetLoader(epoch=e)."""

from __future__ import annotations

import copy
import json
from itertools import islice
from pathlib import Path

import pytest
import torch
from loader_util import flat_ids, sample_id, write_ids_dataset

from neurocodec import ResumableWebDatasetLoader, WebDatasetLoader, create_webdataset_dataloader

N, SHARD, B = 37, 6, 4
KW = dict(seed=3, buffer_size=8)


@pytest.fixture(scope="module")
def path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ids_dataset(tmp_path_factory.mktemp("options") / "ds", N, SHARD)


@pytest.fixture(scope="module")
def epochs(path: Path) -> list[list[int]]:
    """Each epoch's order (epochs 0-5), from the main process."""
    return [[sample_id(s) for s in WebDatasetLoader(path, epoch=e, **KW)] for e in range(6)]


def _ids(samples: list[dict]) -> list[int]:
    """A plain DataLoader's collate_fn: the batch's sample ids (each sample checked)."""
    return [sample_id(s) for s in samples]


def _flat(batches) -> list[int]:
    return [i for b in batches for i in b]


def _taken(loader, batched: bool) -> list[int]:
    """What a loop that stops after `len(loader)` items takes (the iterator left unexhausted)."""
    items = list(islice(iter(loader), len(loader)))
    return flat_ids(items) if batched else [sample_id(s) for s in items]


def test_a_loop_stopped_after_len_items_gets_the_next_epoch_on_its_next_iter(path, epochs, tmp_path):
    for make, batched in ((lambda: WebDatasetLoader(path, **KW), False),
                          (lambda: create_webdataset_dataloader(path, batch_size=B, num_workers=0, **KW), True)):
        loader = make()
        assert [_taken(loader, batched) for _ in range(3)] == epochs[:3]
        state = json.loads(json.dumps(loader.state_dict()))
        assert (state["epoch"], state["position"]) == (2, N)  # every sample of epoch 2 handed out
        resumed = make()
        resumed.load_state_dict(state)
        assert _taken(resumed, batched) == epochs[3]  # like (3, 0)
    ckpt = tmp_path / "ckpt.json"
    resumable = ResumableWebDatasetLoader(path, ckpt, checkpoint_interval=1000, **KW)
    assert _taken(resumable, False) == epochs[0] and not ckpt.exists()
    it = iter(resumable)  # the loop is done with epoch 0: its end is checkpointed
    assert json.loads(ckpt.read_text())["loader_state"]["epoch"] == 1
    assert [sample_id(s) for s in it] == epochs[1]


@pytest.mark.multiprocess
@pytest.mark.parametrize("persistent", [False, True])
def test_workers_read_each_epoch_and_resume_exactly(path, epochs, persistent):
    loader = create_webdataset_dataloader(path, batch_size=B, num_workers=2, persistent_workers=persistent, **KW)
    assert flat_ids(loader) == epochs[0]
    assert _taken(loader, True) == epochs[1]  # stopped at the end: epoch 2 next (persistent workers stay up)
    it = iter(loader)
    head = flat_ids(islice(it, 3))
    state = loader.state_dict()
    it.close()
    assert head == epochs[2][:3 * B] and (state["epoch"], state["position"]) == (2, 3 * B)
    assert flat_ids(loader) == epochs[2][3 * B:]  # the same loader continues
    resumed = create_webdataset_dataloader(path, batch_size=B, num_workers=2, persistent_workers=persistent, **KW)
    resumed.load_state_dict(state)
    assert flat_ids(resumed) == epochs[2][3 * B:] and flat_ids(resumed) == epochs[3]


@pytest.mark.multiprocess
def test_generator_seeds_the_workers_never_the_order(path, epochs):
    def seeds(generator: torch.Generator) -> tuple[list[int], list[int]]:
        def collate(samples):
            return {"ids": [int(s["x"][0]) for s in samples], "seed": torch.initial_seed()}
        loader = create_webdataset_dataloader(path, batch_size=B, num_workers=2, generator=generator,
                                              collate_fn=collate, **KW)
        loader.build_while_workers_start = False  # the workers build every batch but the first
        batches = list(loader)
        return [i for b in batches for i in b["ids"]], [b["seed"] for b in batches[1:]]  # batch 0: built here

    ids, first = seeds(torch.Generator().manual_seed(7))
    again, second = seeds(torch.Generator().manual_seed(7))
    other, third = seeds(torch.Generator().manual_seed(8))
    assert ids == again == other == epochs[0]
    assert first == second and first != third


def test_torch_options_are_checked_in_words(path):
    with pytest.raises(ValueError, match="in_order=False.*epoch's order"):
        create_webdataset_dataloader(path, num_workers=2, in_order=False)
    with pytest.raises(ValueError, match="persistent_workers=True needs num_workers > 0"):
        create_webdataset_dataloader(path, num_workers=0, persistent_workers=True)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        create_webdataset_dataloader(path, num_workers=0, generator=7)
    with pytest.raises(TypeError, match="pin_memory_device must be a str"):
        create_webdataset_dataloader(path, num_workers=0, pin_memory_device=0)
    loader = create_webdataset_dataloader(path, batch_size=B, num_workers=0, in_order=True, pin_memory=False,
                                          pin_memory_device="cpu", **KW)
    assert len(flat_ids(loader)) == N


@pytest.mark.multiprocess
@pytest.mark.parametrize("persistent", [False, True])
def test_webdataset_loader_in_a_plain_dataloader_reads_the_next_epoch_each_iteration(path, epochs, persistent):
    dataset = WebDatasetLoader(path, batch_size=B, **KW)
    plain = torch.utils.data.DataLoader(dataset, batch_size=B, num_workers=2, persistent_workers=persistent,
                                        collate_fn=_ids)
    assert [_flat(plain) for _ in range(2)] == epochs[:2]
    assert _flat(islice(plain, 2)) == epochs[2][:2 * B]  # left early: still epoch 2's iteration
    assert dataset.epoch == 3 and _flat(plain) == epochs[3]
    dataset.set_epoch(5)  # reaches persistent workers too
    assert _flat(plain) == epochs[5]
    stopped = WebDatasetLoader(path, **KW)
    _taken(stopped, False)  # state: every sample of epoch 0 handed out
    dataset.load_state_dict(stopped.state_dict())
    assert _flat(plain) == epochs[1]
    with pytest.raises(ValueError, match="read by DataLoader workers.*StatefulDataLoader"):
        dataset.state_dict()


@pytest.mark.multiprocess
@pytest.mark.parametrize("workers", [0, 2])
def test_stateful_dataloader_resumes_exactly_in_the_middle_and_at_the_end(path, epochs, workers):
    from torchdata.stateful_dataloader import StatefulDataLoader  # installed by .ci/run (--no-deps)

    def make():
        return StatefulDataLoader(WebDatasetLoader(path, batch_size=B, **KW), batch_size=B,
                                           num_workers=workers, collate_fn=_ids)

    loader = make()
    assert _flat(loader) == epochs[0]
    at_end = copy.deepcopy(loader.state_dict())
    it = iter(loader)
    head = [next(it) for _ in range(5)]
    middle = copy.deepcopy(loader.state_dict())
    assert _flat(head) == epochs[1][:5 * B]
    resumed = make()
    resumed.load_state_dict(middle)
    assert _flat(resumed) == epochs[1][5 * B:] and _flat(resumed) == epochs[2]
    resumed = make()
    resumed.load_state_dict(at_end)
    assert _flat(resumed) == epochs[1]
