"""Ranks (issue 3, points 3 and 4) on real gloo process groups of 2 and 3 processes.

Each rank process finds its rank and world size from the initialised group only (no RANK /
WORLD_SIZE in its environment), runs one all_reduce per batch as DDP would (a rank with fewer
batches would hang, caught by the timeouts), and reports its keys, batch count and the all-reduced
min / max count. A mid-epoch state saved by rank 0 of the 2-process group is resumed by the
3-process group.
"""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from loader_util import (
    flat_ids,
    key_id,
    run_ranks,
    shard_sizes,
    write_ids_dataset,
)

from neurocodec import EpochOrder, WebDatasetLoader, create_webdataset_dataloader

N, SHARD, B, BUFFER, SEED, STOP = 51, 8, 4, 16, 7, 3
# 51 % (4*2) = 3 >= 2 and 51 % (4*3) = 3 >= 3; after 3 steps of 2 ranks 27 are left: 27 % 12 = 3 >= 3.
# So no tail repeats: every sample exactly once on every configuration below.

RANK_SCRIPT = textwrap.dedent('''
    import json, os, sys
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from neurocodec import create_webdataset_dataloader

    cfg = json.loads(sys.argv[1])
    rank = int(sys.argv[2])
    assert "RANK" not in os.environ and "WORLD_SIZE" not in os.environ
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{cfg['port']}", rank=rank,
                            world_size=cfg["world"], timeout=timedelta(seconds=90))
    kw = dict(batch_size=cfg["b"], buffer_size=cfg["buffer"], seed=cfg["seed"])
    out = {"rank": dist.get_rank(), "epochs": {}}

    def run(loader, limit=None):
        keys, count = [], 0
        for batch in loader:
            keys.append(batch["__key__"])
            flag = torch.ones(1)
            dist.all_reduce(flag)  # one collective per step, as DDP does
            assert int(flag.item()) == cfg["world"]
            count += 1
            if count == limit:
                break
        stats = torch.tensor([count, -count])
        dist.all_reduce(stats, op=dist.ReduceOp.MAX)
        return {"keys": keys, "count": count, "max": int(stats[0]), "min": -int(stats[1]), "len": len(loader)}

    for workers in cfg["workers"]:
        out["epochs"][str(workers)] = run(create_webdataset_dataloader(cfg["path"], num_workers=workers, **kw))
    if cfg.get("stop"):
        loader = create_webdataset_dataloader(cfg["path"], num_workers=2, **kw)
        out["stopped"] = run(loader, limit=cfg["stop"])
        out["state"] = loader.state_dict()
        if rank == 0:
            with open(cfg["state_path"], "w") as f:
                json.dump(loader.state_dict(), f)
    if cfg.get("resume"):
        with open(cfg["state_path"]) as f:
            state = json.load(f)
        loader = create_webdataset_dataloader(cfg["path"], num_workers=cfg["resume_workers"], **kw)
        loader.load_state_dict(state)
        out["resumed"] = run(loader)
    dist.barrier()
    dist.destroy_process_group()
    with open(cfg["out"] + f".{rank}", "w") as f:
        json.dump(out, f)
''')


def launch(server, tmp: Path, world: int, **cfg) -> list[dict]:
    """Run the rank script in `world` processes of one gloo group (forked from `server`, the
    session's rank_server); their reports by rank."""
    script = tmp / "rank.py"
    script.write_text(RANK_SCRIPT)
    return run_ranks(script, dict(cfg, b=B, buffer=BUFFER, seed=SEED), world, tmp / f"out{world}", server=server)


def ids_of(report: dict) -> list[list[int]]:
    return [[key_id(k) for k in batch] for batch in report["keys"]]


def check_epoch(reports: list[dict], name: str, world: int, expected: list[int]) -> None:
    """Same batch count on every rank (also by all_reduce) and the steps in order are `expected`."""
    runs = [r["epochs"][name] if name in r["epochs"] else r[name] for r in reports]
    counts = {run["count"] for run in runs}
    assert len(counts) == 1, counts
    count = counts.pop()
    assert all(run["max"] == run["min"] == count for run in runs)
    if name != "resumed":
        assert all(run["len"] == count for run in runs)
    per_rank = [[[key_id(k) for k in batch] for batch in run["keys"]] for run in runs]
    stepped = [i for t in range(count) for r in range(world) for i in per_rank[r][t]]
    assert stepped == expected
    assert Counter(stepped) == Counter(expected)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_ids_dataset(tmp_path_factory.mktemp("dist") / "ds", N, SHARD)


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(400)
def test_gloo_groups_of_2_and_3_and_resume_with_another_world_size(rank_server, dataset, tmp_path):
    order = EpochOrder(shard_sizes(N, SHARD), seed=SEED, buffer_size=BUFFER).ids(0, N).tolist()
    state_path = tmp_path / "state.json"

    two = launch(rank_server, tmp_path, 2, path=str(dataset), workers=[0, 2], stop=STOP, state_path=str(state_path))
    for workers in ("0", "2"):
        check_epoch(two, workers, 2, order)
        assert sorted(i for r in two for b in ids_of(r["epochs"][workers]) for i in b) == list(range(N))
    seen = [i for t in range(STOP) for r in two for i in ids_of(r["stopped"])[t]]
    assert seen == order[: STOP * B * 2]
    state = json.loads(state_path.read_text())
    assert state["position"] == STOP * B * 2 and state["epoch"] == 0
    assert all(r["state"] == state for r in two), "every rank reports the same state"

    three = launch(rank_server, tmp_path, 3, path=str(dataset), workers=[0, 2], resume=True, resume_workers=2,
                   state_path=str(state_path))
    for workers in ("0", "2"):
        check_epoch(three, workers, 3, order)
    check_epoch(three, "resumed", 3, order[len(seen):])
    rest = [i for r in three for b in ids_of(r["resumed"]) for i in b]
    assert sorted(seen + rest) == list(range(N)), "seen + remainder = the epoch, each sample once"


@pytest.mark.multiprocess
def test_rank_and_world_size_from_environment(dataset, monkeypatch):
    order = EpochOrder(shard_sizes(N, SHARD), seed=SEED, buffer_size=BUFFER).ids(0, N).tolist()
    for world in (2, 3):
        per_rank, samples = [], []
        for rank in range(world):
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", str(world))
            loader = create_webdataset_dataloader(dataset, batch_size=B, num_workers=2 if rank == 0 else 0,
                                                  buffer_size=BUFFER, seed=SEED)
            per_rank.append([b["__key__"] for b in loader])
            samples += [key_id(s["__key__"]) for s in WebDatasetLoader(dataset, buffer_size=BUFFER, seed=SEED)]
        assert len({len(r) for r in per_rank}) == 1
        stepped = [key_id(k) for t in range(len(per_rank[0])) for r in per_rank for k in r[t]]
        assert stepped == order
        # Sample level (batch size 1): the tail of N % world samples leaves world - N % world
        # ranks to repeat one sample each (documented policy), else every sample once.
        assert set(samples) == set(range(N))
        assert len(samples) - N == (world - N % world if N % world else 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError):
        WebDatasetLoader(dataset)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert flat_ids(create_webdataset_dataloader(dataset, batch_size=B, num_workers=0, buffer_size=BUFFER,
                                                 seed=SEED)) == order
