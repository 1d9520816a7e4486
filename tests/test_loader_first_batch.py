"""The first batch of a multi-worker iteration is built in the training process (see
WebDatasetDataLoader.__iter__): before any worker starts, with the same content, state and
error behaviour as a batch from a worker, and no workers at all when it is the last one. The
next batches are built there too until every worker is ready, then the workers take over from
that position; an epoch finished before they are ready stops them without waiting. Workers
that would take longer to start than the rest of the epoch takes to build here are not started
at all (`worker_startup_s`; 0 starts them, as most tests here do to test their start)."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch.utils.data

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
    assert rest == reference[1:]
    resumed = create_webdataset_dataloader(dataset, batch_size=6, num_workers=2, seed=4)
    resumed.load_state_dict(state)
    assert [batch_ids(b) for b in resumed] == reference[1:]


def test_a_single_batch_left_starts_no_workers(dataset: Path, tmp_path: Path) -> None:
    loader = create_webdataset_dataloader(dataset, batch_size=64, num_workers=2, shuffle=False,
                                          worker_init_fn=_mark_worker(tmp_path))
    assert [sorted(batch_ids(b)) for b in loader] == [list(range(40))]
    assert not list(tmp_path.iterdir()) and loader.epoch == 1


def _with_last_sample_damaged(root: Path) -> Path:
    """`root`, its one shard flipped inside the last sample's payload."""
    shard = root / "shard_000000.tar"
    data = bytearray(shard.read_bytes())
    data[-2048] ^= 0xFF
    shard.write_bytes(bytes(data))
    return root


def test_a_bad_first_batch_raises_here_naming_the_sample(tmp_path: Path) -> None:
    root = _with_last_sample_damaged(write_ids_dataset(tmp_path / "ds", 12, 12))
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


class _Mark:
    """A picklable worker_init_fn that leaves a file per worker in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __call__(self, worker: int) -> None:
        (self.directory / f"worker{worker}").touch()


class _BuiltBy:
    """A collate_fn that says which process built each batch; in the training process, every
    batch from the `waits_from`-th on waits until both workers have run `_Mark` (and a little
    more, so they are ready), so that some batches are built here and the workers are ready for
    the rest."""

    def __init__(self, directory: Path, waits_from: int = 2) -> None:
        self.main, self.directory, self.calls, self.waits_from = os.getpid(), directory, 0, waits_from

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        if os.getpid() == self.main:
            self.calls += 1
            deadline = time.monotonic() + 60
            while self.calls >= self.waits_from and len(list(self.directory.iterdir())) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.02)
        return {"ids": [int(s["metadata"]["id"]) for s in samples], "pid": os.getpid()}


@pytest.mark.parametrize("context", ["fork", "spawn", "forkserver"])  # forkserver: its workers start in a thread
def test_batches_are_built_here_until_the_workers_are_ready_then_by_them(dataset: Path, tmp_path: Path,
                                                                          context: str) -> None:
    reference = [batch_ids(b) for b in create_webdataset_dataloader(dataset, batch_size=2, num_workers=0, seed=3)]
    loader = create_webdataset_dataloader(dataset, batch_size=2, num_workers=2, seed=3, multiprocessing_context=context,
                                          collate_fn=_BuiltBy(tmp_path), worker_init_fn=_Mark(tmp_path))
    loader.worker_startup_s = 0.0                             # start them after the first batch, whatever the epoch
    batches, states = [], []
    for batch in loader:
        batches.append(batch)
        states.append(loader.state_dict())
    assert [b["ids"] for b in batches] == reference
    here = [b["pid"] == os.getpid() for b in batches]
    assert here[0] and not here[-1]                           # built here first, by the workers last
    assert here == sorted(here, reverse=True)                 # one hand-over, never back
    assert len({b["pid"] for b in batches if b["pid"] != os.getpid()}) == 2
    assert [s["position"] for s in states] == [2 * (k + 1) for k in range(20)]
    handover = here.index(False)                              # resuming at the hand-over reads the rest
    if context != "fork":
        return                                                # (once is enough: the workers start seconds)
    resumed = create_webdataset_dataloader(dataset, batch_size=2, num_workers=2, seed=3, multiprocessing_context=context)
    resumed.load_state_dict(states[handover - 1])
    assert [batch_ids(b) for b in resumed] == reference[handover:]


def test_an_epoch_built_here_before_spawned_workers_are_ready_stops_them(dataset: Path) -> None:
    loader = create_webdataset_dataloader(dataset, batch_size=8, num_workers=2, seed=1, multiprocessing_context="spawn",
                                          persistent_workers=True)
    loader.worker_startup_s = 0.0
    others = set(multiprocessing.active_children())
    for epoch in range(2):                                    # spawned workers take seconds: 5 batches take ms
        reference = create_webdataset_dataloader(dataset, batch_size=8, num_workers=0, seed=1, epoch=epoch)
        assert [batch_ids(b) for b in loader] == [batch_ids(b) for b in reference]
        assert set(multiprocessing.active_children()) <= others  # stopped, not left starting (nor kept)
    assert loader.state_dict()["epoch"] == 2


def test_an_epoch_built_before_the_fork_server_is_up_ends_and_exits_cleanly(dataset: Path) -> None:
    """Under forkserver the workers start in a thread; an epoch built here before the fork
    server is up waits for it, then stops the workers; the script exits normally (no hang, no
    abort, no error on stderr)."""
    script = (
        "import sys\n"
        "from neurocodec import create_webdataset_dataloader\n"
        "if __name__ == '__main__':\n"
        f"    loader = create_webdataset_dataloader({str(dataset)!r}, batch_size=8, num_workers=2, seed=1,\n"
        "                                          multiprocessing_context='forkserver')\n"
        "    loader.worker_startup_s = 0.0\n"
        "    for _ in range(2):\n"
        "        print(sorted(i for b in loader for i in b['metadata'] and [m['id'] for m in b['metadata']]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(list(range(40)))] * 2
    assert "Error" not in done.stderr and "Traceback" not in done.stderr


def test_a_bad_sample_met_while_spawned_workers_start_raises_here_and_stops_them(tmp_path: Path) -> None:
    root = _with_last_sample_damaged(write_ids_dataset(tmp_path / "ds", 24, 24))
    others = set(multiprocessing.active_children())
    loader = create_webdataset_dataloader(root, batch_size=4, num_workers=2, shuffle=False,
                                          multiprocessing_context="spawn")
    loader.worker_startup_s = 0.0
    got = []
    with pytest.raises(ShardError, match=r"sample 23 of"):
        for batch in loader:                                  # batches 0-4 built here, 5 meets the sample
            got.append(batch_ids(batch))
    assert got == [list(range(k, k + 4)) for k in range(0, 20, 4)]
    assert loader.state_dict()["position"] == 20
    assert set(multiprocessing.active_children()) <= others


def test_a_short_epoch_under_spawn_is_built_here_without_starting_workers(dataset: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Spawned workers each import torch (seconds); 20 batches take milliseconds here."""
    from neurocodec.loader import worker_start
    monkeypatch.setattr(worker_start, "_seen_startup_s", {})  # the default, whatever ran before
    reference = [batch_ids(b) for b in create_webdataset_dataloader(dataset, batch_size=2, num_workers=0, seed=3)]
    loader = create_webdataset_dataloader(dataset, batch_size=2, num_workers=2, seed=3, multiprocessing_context="spawn",
                                          worker_init_fn=_Mark(tmp_path), persistent_workers=True)
    others = set(multiprocessing.active_children())
    for epoch in range(2):
        got = []
        for batch in loader:
            got.append(batch_ids(batch))
            assert set(multiprocessing.active_children()) <= others   # no worker process, ever
        expected = reference if epoch == 0 else [batch_ids(b) for b in create_webdataset_dataloader(
            dataset, batch_size=2, num_workers=0, seed=3, epoch=1)]
        assert got == expected
    assert not list(tmp_path.iterdir()) and loader.epoch == 2


@pytest.mark.parametrize("startup_s, here", [(1e-9, 2), (None, 1)])
def test_workers_start_once_the_rest_would_take_longer_here(dataset: Path, tmp_path: Path, startup_s: float | None,
                                                            here: int) -> None:
    """Under fork (start-up 0) the workers start after the first batch; with any start-up time
    the second batch is built here too, to time one (the first also opens the shards)."""
    reference = [batch_ids(b) for b in create_webdataset_dataloader(dataset, batch_size=2, num_workers=0, seed=3)]
    loader = create_webdataset_dataloader(dataset, batch_size=2, num_workers=2, seed=3, multiprocessing_context="fork",
                                          collate_fn=_BuiltBy(tmp_path, here + 1), worker_init_fn=_Mark(tmp_path))
    loader.worker_startup_s = startup_s
    batches = list(loader)
    assert [b["ids"] for b in batches] == reference
    built_here = [b["pid"] == os.getpid() for b in batches]
    assert built_here[:here] == [True] * here and not built_here[-1]
    assert len(list(tmp_path.iterdir())) == 2


def test_the_start_up_expected_is_the_last_one_seen_under_the_same_method(monkeypatch: pytest.MonkeyPatch) -> None:
    from neurocodec.loader import worker_start
    monkeypatch.setattr(worker_start, "_seen_startup_s", {})
    expected, note = worker_start.expected_startup_s, worker_start.note_startup
    assert expected("fork") == 0.0 and expected(multiprocessing.get_context("fork")) == 0.0
    assert expected("spawn") == expected("forkserver") == worker_start.DEFAULT_STARTUP_S
    note("spawn", 0.7, finished=True)
    assert expected(multiprocessing.get_context("spawn")) == 0.7
    assert expected("forkserver") == worker_start.DEFAULT_STARTUP_S
    note("spawn", 0.3, finished=False)                        # not ready after 0.3 s: says little
    assert expected("spawn") == 0.7
    note("spawn", 5.0, finished=False)                        # not ready after 5 s: at least 5
    assert expected("spawn") == 5.0
    note("forkserver", 0.2, finished=True)                    # the fork server was already up
    assert expected("forkserver") == 0.2


class _Counting(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter(range(10 ** 9))


def _hold_and_exit(lock: Any) -> None:
    lock.acquire()
    os._exit(0)


def test_abandoned_workers_are_stopped_even_when_a_dead_process_holds_their_shared_lock() -> None:
    """A worker killed while it held the lock of torch's `done` event (its loop reads the event
    under that lock) left torch's shutdown waiting on the lock forever: here a process takes
    the lock and exits holding it, and abandoning the workers must still return."""
    from neurocodec.loader.worker_start import abandon_workers

    batches = iter(torch.utils.data.DataLoader(_Counting(), batch_size=None, num_workers=2,
                                               multiprocessing_context="fork"))
    holder = multiprocessing.get_context("fork").Process(target=_hold_and_exit,
                                                         args=(batches._workers_done_event._cond._lock,))
    holder.start()
    holder.join()
    stopped = threading.Event()
    threading.Thread(target=lambda: (abandon_workers(batches), stopped.set()), daemon=True).start()
    assert stopped.wait(30)
    assert not any(worker.is_alive() for worker in batches._workers)
