"""A real training process killed with SIGKILL mid-epoch and restarted (issue 3, points 4 and 5).

The training script logs every sample it consumes (`<epoch> <key>`, flushed and fsynced) over
two epochs. It is killed at a point drawn from a seed, either by itself right after logging a
sample or from outside while it runs (then anywhere: in a checkpoint write, between a yield and
its log line, in a DataLoader worker), always with SIGKILL to its whole process group (main
process and workers, as when a node dies). The restarted run must give, after the log entries
up to the checkpointed position, exactly the uninterrupted run's stream; the entries between
the checkpoint and the crash are exactly the samples handed out again.

Each run is a process forked from one server that has imported torch and neurocodec
(tests/isolated.py), in a session of its own: a fresh interpreter per run would spend most of
the module's time importing torch again.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest
from isolated import ForkServer
from loader_util import child_env, shard_sizes, write_ids_dataset

from neurocodec import EpochOrder

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

N, SHARD, EPOCHS, BUFFER, SEED = 80, 12, 2, 24, 5

TRAIN = textwrap.dedent('''
    import json, os, signal, sys, time

    cfg = json.loads(sys.argv[1])
    fd = os.open(cfg["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    consumed = 0

    def consume(epoch, keys):
        global consumed
        os.write(fd, "".join(f"{epoch} {k}\\n" for k in keys).encode())
        os.fsync(fd)
        consumed += len(keys)
        if cfg.get("self_kill") is not None and consumed >= cfg["self_kill"]:
            os.killpg(0, signal.SIGKILL)
        time.sleep(cfg["pace"])

    kw = dict(buffer_size=cfg["buffer"], seed=cfg["seed"])
    if cfg["kind"] == "resumable":
        from neurocodec import ResumableWebDatasetLoader

        loader = ResumableWebDatasetLoader(cfg["path"], cfg["ckpt"], checkpoint_interval=cfg["interval"], **kw)
        while loader.epoch < cfg["epochs"]:
            for sample in loader:
                consume(loader.epoch, [sample["__key__"]])
    else:
        from neurocodec import create_webdataset_dataloader

        loader = create_webdataset_dataloader(cfg["path"], batch_size=cfg["b"], num_workers=2, **kw)
        if os.path.exists(cfg["ckpt"]):
            with open(cfg["ckpt"]) as f:
                loader.load_state_dict(json.load(f))
        while loader.epoch < cfg["epochs"]:
            for batch in loader:
                consume(loader.epoch, batch["__key__"])
                tmp = cfg["ckpt"] + ".tmp"
                with open(tmp, "w") as f:
                    json.dump(loader.state_dict(), f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, cfg["ckpt"])
''')


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_ids_dataset(tmp_path_factory.mktemp("kill") / "ds", N, SHARD)


@pytest.fixture(scope="module")
def server():
    """Forks the training processes (torch and neurocodec imported once)."""
    srv = ForkServer("torch", "neurocodec", "neurocodec.loader.dataloader", "test_loader_kill", env=child_env())
    yield srv
    srv.close()


def run_training(source: str, cfg: dict) -> None:
    """The training script's body, run as `python train.py <cfg>` would run it (in a forked job)."""
    sys.argv = ["train.py", json.dumps(cfg)]
    exec(compile(source, "train.py", "exec"), {"__name__": "__main__"})


def expected_stream() -> list[str]:
    sizes = shard_sizes(N, SHARD)
    return [f"{e} sample_{i + 1:09d}" for e in range(EPOCHS)
            for i in EpochOrder(sizes, seed=SEED, epoch=e, buffer_size=BUFFER).ids(0, N).tolist()]


def train(server: ForkServer, dataset: Path, ckpt: Path, log: Path, kind: str, *, self_kill: int | None = None,
          external_kill: int | None = None, pace: float = 0.0, interval: int = 7, b: int = 3) -> int:
    """Run the training script to its end or its kill; its return code."""
    cfg = dict(path=str(dataset), ckpt=str(ckpt), log=str(log), kind=kind, interval=interval, b=b,
               buffer=BUFFER, seed=SEED, epochs=EPOCHS, self_kill=self_kill, pace=pace)
    job = server.start("test_loader_kill:run_training", source=TRAIN, cfg=cfg, session=True, headroom=None,
                       watchdog=120)
    try:
        if external_kill is not None:
            deadline = time.monotonic() + 120
            while lines(log) < external_kill and job.alive() and time.monotonic() < deadline:
                time.sleep(0.002)
            if job.alive():
                kill_group(job.pid)  # the group of the run: main process and workers
    except BaseException:
        kill_group(job.pid)
        job.wait()
        raise
    outcome = job.wait()
    if outcome.signal is not None:
        assert outcome.signal == "SIGKILL", outcome.explain()
        return -signal.SIGKILL
    assert outcome.exit_code == 0 and outcome.raised is None and outcome.reported, outcome.explain()
    return 0


def kill_group(pid: int) -> None:
    """SIGKILL the process group `pid` leads, if it is still there."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def read_log(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def check_crash_and_resume(server: ForkServer, tmp: Path, dataset: Path, kind: str, per_checkpoint: int,
                           **kill) -> None:
    uninterrupted = expected_stream()
    crashed_log, resumed_log = tmp / "crashed.log", tmp / "resumed.log"
    ckpt = tmp / "ckpt.json"
    rc = train(server, dataset, ckpt, crashed_log, kind, **kill)
    assert rc == -signal.SIGKILL, "the run must be killed mid-way"
    crashed = read_log(crashed_log)
    if ckpt.exists():
        doc = json.loads(ckpt.read_text())  # atomic: never a torn file, whenever the kill came
        state = doc.get("loader_state", doc)
        done = state["epoch"] * N + state["position"]
    else:
        done = 0
    assert crashed == uninterrupted[: len(crashed)], "the killed run followed the uninterrupted stream"
    # The checkpoint counts only samples the loop finished with, and lags by at most one interval.
    assert done <= len(crashed) <= done + per_checkpoint, (done, len(crashed))
    assert len(crashed) < len(uninterrupted)

    assert train(server, dataset, ckpt, resumed_log, kind) == 0
    resumed = read_log(resumed_log)
    assert crashed[:done] + resumed == uninterrupted
    # Samples between the last checkpoint and the crash are exactly those handed out again.
    assert resumed[: len(crashed) - done] == crashed[done:]


def test_uninterrupted_runs_follow_the_epoch_order(server, dataset, tmp_path):
    for kind in ("resumable", "dataloader"):
        run = tmp_path / kind
        run.mkdir()
        assert train(server, dataset, run / "ckpt.json", run / "log", kind) == 0
        assert read_log(run / "log") == expected_stream()
        state = json.loads((run / "ckpt.json").read_text())
        state = state.get("loader_state", state)
        # The resumable loader checkpoints at each epoch's end; the script saves after each batch,
        # before the loader moves on: the end of the last epoch, which resumes to nothing left.
        end = (EPOCHS, 0) if kind == "resumable" else (EPOCHS - 1, N)
        assert (state["epoch"], state["position"]) == end


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_resumable_loader_killed_and_resumed(server, dataset, tmp_path, seed):
    rng = random.Random(seed)
    interval = rng.choice([1, 5, 7, 16])
    if seed % 2 == 0:  # killed by itself right after logging a sample: an exact, random point
        kill = dict(self_kill=rng.randrange(1, EPOCHS * N))
    else:  # killed from outside while it runs: anywhere, including inside a checkpoint write
        kill = dict(external_kill=rng.randrange(1, N), pace=0.02)
    check_crash_and_resume(server, tmp_path, dataset, "resumable", interval, interval=interval, **kill)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dataloader_with_workers_killed_and_resumed(server, dataset, tmp_path, seed):
    rng = random.Random(100 + seed)
    b = rng.choice([1, 3, 4])
    if seed != 1:
        kill = dict(self_kill=rng.randrange(1, EPOCHS * N))
    else:
        kill = dict(external_kill=rng.randrange(1, N), pace=0.03)
    check_crash_and_resume(server, tmp_path, dataset, "dataloader", b, b=b, **kill)
