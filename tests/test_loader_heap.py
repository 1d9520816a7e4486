"""The training process's heap is frozen while forked DataLoader workers run, and handed back.

See neurocodec/loader/heap.py for why. These tests check the contract a user relies on: the
freeze lasts exactly as long as some loader iterates with forked workers (nested loaders and an
abandoned iteration included), cyclic garbage from before is collected afterwards, and a
process that manages `gc.freeze` itself is left alone.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

from loader_util import batch_ids, write_ids_dataset
from neurocodec import create_webdataset_dataloader
from neurocodec.loader.heap import forks, frozen_heap

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ids_dataset(tmp_path_factory.mktemp("heap") / "ds", 96, 24)


def _loader(path: Path, **kwargs):
    return create_webdataset_dataloader(path, batch_size=8, num_workers=2, shuffle=True, seed=3, **kwargs)


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_frozen_while_iterating_with_forked_workers_then_released(dataset: Path) -> None:
    assert gc.get_freeze_count() == 0
    garbage = _Cycle()
    ref = weakref.ref(garbage)
    del garbage                                    # cyclic garbage from before the loader
    ids = []
    for k, batch in enumerate(_loader(dataset, multiprocessing_context="fork")):
        assert (gc.get_freeze_count() > 0) == (k > 0)  # batch 0 is built before any worker exists
        ids += batch_ids(batch)
    assert sorted(ids) == list(range(96))
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert ref() is None                           # collected once the heap was handed back


def test_nested_and_abandoned_iterations(dataset: Path) -> None:
    outer = iter(_loader(dataset, multiprocessing_context="fork"))
    next(outer), next(outer)                       # the second batch comes from the workers
    inner = iter(_loader(dataset, multiprocessing_context="fork"))
    next(inner), next(inner)
    inner.close()                                  # abandoned mid-epoch
    assert gc.get_freeze_count() > 0               # the outer loader still runs
    assert len(list(outer)) == 96 // 8 - 2
    assert gc.get_freeze_count() == 0


def test_spawned_workers_and_in_process_loading_leave_the_heap_alone(dataset: Path) -> None:
    for batch in _loader(dataset, multiprocessing_context="spawn"):
        assert gc.get_freeze_count() == 0
        break
    loader = create_webdataset_dataloader(dataset, batch_size=8, num_workers=0, shuffle=False)
    for batch in loader:
        assert gc.get_freeze_count() == 0


def test_a_process_that_froze_its_heap_itself_keeps_its_freeze(dataset: Path) -> None:
    gc.freeze()
    try:
        for batch in _loader(dataset, multiprocessing_context="fork"):
            pass
        # Still frozen (the count itself drops as frozen objects die, so it is not compared).
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_forks_reads_every_form_of_context() -> None:
    import multiprocessing

    assert forks("fork") and not forks("spawn") and not forks("forkserver")
    assert forks(multiprocessing.get_context("fork")) and not forks(multiprocessing.get_context("spawn"))
    assert forks(None) == (multiprocessing.get_start_method() == "fork")
    with frozen_heap(enabled=False):
        assert gc.get_freeze_count() == 0
