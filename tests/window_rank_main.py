"""One rank of a gloo group reading load-time windows (run by tests/test_window_loader_ranks.py).

`python window_rank_main.py CONFIG_JSON RANK`: joins the group (rank and world size only from
the group), runs one all_reduce per batch as DDP does (a rank with fewer batches would hang) and
writes a JSON report to CONFIG["out"].RANK:

- "epochs": the configured number of jittered epochs with `workers` DataLoader workers, each
  {"batches": records per batch, "count", "len" (len(loader) before the pass), "min", "max"
  (the batch count all-reduced over the ranks)};
- "stopped" / "state": `stop` batches of epoch 0 with `stop_workers` workers, then the state
  (also written to CONFIG["state_out"].RANK);
- "resumed": with CONFIG["resume_from"], a loader restored from that state file reading the rest
  of its epoch, then "next": the whole epoch after it.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from window_util import records  # noqa: E402

from neurocodec import create_webdataset_dataloader  # noqa: E402


def run(loader, world: int, limit: int | None = None) -> dict:
    """Records of one pass (or of `limit` batches), with the batch count all-reduced."""
    before = len(loader)
    batches = []
    for batch in loader:
        batches.append(records(batch))
        flag = torch.ones(1)
        dist.all_reduce(flag)  # one collective per step, as DDP does
        assert int(flag.item()) == world
        if len(batches) == limit:
            break
    stats = torch.tensor([len(batches), -len(batches)])
    dist.all_reduce(stats, op=dist.ReduceOp.MAX)
    return {"batches": batches, "count": len(batches), "len": before, "max": int(stats[0]), "min": -int(stats[1])}


def main(cfg: dict, rank: int) -> None:
    """Join the group, run what `cfg` asks, write the report."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{cfg['port']}", rank=rank,
                            world_size=cfg["world"], timeout=timedelta(seconds=90))
    world = dist.get_world_size()
    kw = dict(batch_size=cfg["batch"], seed=cfg["seed"], window_ms=cfg["window_ms"])
    out: dict = {"rank": dist.get_rank()}
    loader = create_webdataset_dataloader(cfg["path"], num_workers=cfg["workers"], **kw)
    out["epochs"] = [run(loader, world) for _ in range(cfg["epochs"])]
    loader = create_webdataset_dataloader(cfg["path"], num_workers=cfg["stop_workers"], **kw)
    out["stopped"] = run(loader, world, limit=cfg["stop"])
    out["state"] = loader.state_dict()
    Path(f"{cfg['state_out']}.{rank}").write_text(json.dumps(out["state"]))
    loader = create_webdataset_dataloader(cfg["path"], num_workers=cfg["stop_workers"], **kw)
    loader.load_state_dict(json.loads(Path(cfg["resume_from"]).read_text()))
    out["resumed"] = run(loader, world)
    out["next"] = run(loader, world)
    dist.barrier()
    dist.destroy_process_group()
    Path(f"{cfg['out']}.{rank}").write_text(json.dumps(out))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]), int(sys.argv[2]))
