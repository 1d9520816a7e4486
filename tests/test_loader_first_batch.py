"""The first batch of a multi-worker iteration is built in the training process (see
WebDatasetDataLoader.__iter__): before any worker starts, with the same content, state and
error behaviour as a batch from a worker, and no workers at all when it is the last one."""

from __future__ import annotations

from pathlib import Path

import pytest

from loader_util import batch_ids, write_ids_dataset
from neurocodec import create_webdataset_dataloader
from neurocodec.errors import ShardError

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ids_dataset(tmp_path_factory.mktemp("first") / "ds", 40, 10)


def _mark_worker(directory: Path):
    def init(worker: int) -> None:
        (directory / f"worker{worker}").touch()
    return init


def test_first_batch_is_ready_before_any_worker_and_state_counts_it(dataset: Path, tmp_path: Path) -> None:
    loader = create_webdataset_dataloader(dataset, batch_size=6, num_workers=2, seed=4,
                                          worker_init_fn=_mark_worker(tmp_path))
    reference = [batch_ids(b) for b in create_webdataset_dataloader(dataset, batch_size=6, num_workers=0, seed=4)]
    it = iter(loader)
    assert batch_ids(next(it)) == reference[0]
    assert not list(tmp_path.iterdir())                       # no worker has started yet
    state = loader.state_dict()
    assert state["position"] == 6
    rest = [batch_ids(b) for b in it]
    assert rest == reference[1:] and sorted(tmp_path.iterdir())  # the workers made the rest
    resumed = create_webdataset_dataloader(dataset, batch_size=6, num_workers=2, seed=4)
    resumed.load_state_dict(state)
    assert [batch_ids(b) for b in resumed] == reference[1:]


def test_a_single_batch_left_starts_no_workers(dataset: Path, tmp_path: Path) -> None:
    loader = create_webdataset_dataloader(dataset, batch_size=64, num_workers=2, shuffle=False,
                                          worker_init_fn=_mark_worker(tmp_path))
    assert [sorted(batch_ids(b)) for b in loader] == [list(range(40))]
    assert not list(tmp_path.iterdir()) and loader.epoch == 1


def test_a_bad_first_batch_raises_here_naming_the_sample(tmp_path: Path) -> None:
    root = write_ids_dataset(tmp_path / "ds", 12, 12)
    shard = root / "shard_000000.tar"
    data = bytearray(shard.read_bytes())
    data[-2048] ^= 0xFF                                       # inside the last sample's payload
    shard.write_bytes(bytes(data))
    loader = create_webdataset_dataloader(root, batch_size=12, num_workers=2, shuffle=False)
    with pytest.raises(ShardError, match=r"sample 11 of"):
        next(iter(loader))
    skipping = create_webdataset_dataloader(root, batch_size=12, num_workers=2, shuffle=False, on_error="skip")
    assert [batch_ids(b) for b in skipping] == [list(range(11))]
    assert skipping.state_dict()["skipped"] == 1


def test_every_sample_of_the_first_batch_skipped_yields_the_next_batch_first(tmp_path: Path) -> None:
    root = write_ids_dataset(tmp_path / "ds", 12, 4)
    (root / "shard_000000.tar").write_bytes(b"")              # the first batch's whole shard is gone
    loader = create_webdataset_dataloader(root, batch_size=4, num_workers=2, shuffle=False, on_error="skip")
    it = iter(loader)
    assert batch_ids(next(it)) == [4, 5, 6, 7]
    assert (loader.state_dict()["position"], loader.state_dict()["skipped"]) == (8, 4)
    assert [batch_ids(b) for b in it] == [[8, 9, 10, 11]]
