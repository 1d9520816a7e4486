"""neurocodec's DataLoader under fork, spawn and forkserver, by how the training process builds
batches while the workers start (issue 18, point 2).

    python benchmarks/startup_table.py            # seed 10,000 and tiny 100,000 samples, best of 2
    python benchmarks/startup_table.py --quick    # 200 / 2,000 samples, one run
    python benchmarks/startup_table.py --quick --contexts fork --workloads seed   # the smoke test

Each measurement runs in a fresh Python process (`python startup_table.py --child SPEC`), which
imports torch and neurocodec before its clock starts, then times `create_webdataset_dataloader`
(batch 32, 2 workers, shuffle, seed 0) from its creation to the end of the loop over one epoch,
every array digested, workers' start-up and shutdown included, in three modes (`MODES`):
the default (the workers are not started while the rest of the epoch would take the training
process less time to build than they take to start), `worker_startup_s = 0` (the tenth
session's loader: the workers always start, batches are built here until they are ready) and
`build_while_workers_start = False` (the loader before that: only the first batch built here).
The printed table gives samples/s and each start method's share of fork's in the same mode.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONTEXTS = ("fork", "spawn", "forkserver")
MODES = {  # mode: (label, the loader's attributes)
    "default": ("default: workers only when worth starting", {}),
    "started": ("workers always started, batches built here until ready", {"worker_startup_s": 0.0}),
    "first": ("workers always started, first batch only built here", {"build_while_workers_start": False}),
}
SHAPES = {"seed": {"spikes": (100, 96), "behavior": (100, 2)}, "tiny": {"spikes": (10, 16), "behavior": (10, 2)}}


def write(path: Path, shapes: dict[str, tuple[int, ...]], samples: int) -> None:
    """A dataset of `samples` seeded float32 samples in ten shards."""
    import numpy as np

    from neurocodec import WebDatasetWriter

    rng = np.random.default_rng(0)
    with WebDatasetWriter(path, shard_size=max(1, samples // 10), fsync=False) as writer:
        for i in range(samples):
            writer.write_sample({k: rng.random(s, dtype=np.float32) for k, s in shapes.items()}, metadata={"trial": i})


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One epoch as the module documentation says; returns samples, seconds and the digest."""
    import numpy as np
    import torch  # noqa: F401  (imported before the clock, as a training script does)

    from neurocodec import create_webdataset_dataloader

    if spec["context"] == "forkserver":
        import multiprocessing

        multiprocessing.set_forkserver_preload(["torch", "neurocodec"])
    start = time.perf_counter()
    loader = create_webdataset_dataloader(spec["path"], batch_size=32, num_workers=2, seed=0,
                                          multiprocessing_context=spec["context"])
    for name, value in MODES[spec["mode"]][1].items():
        setattr(loader, name, value)
    samples, digest = 0, 0
    for batch in loader:
        for name in ("spikes", "behavior"):
            digest = (digest + int(batch[name].numpy().view(np.uint32).sum(dtype=np.uint64))) % (1 << 64)
        samples += len(batch["spikes"])
    return {"samples": samples, "seconds": time.perf_counter() - start, "digest": digest}


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """`child(spec)` in a fresh interpreter."""
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(quick: bool, repeat: int, base: Path, contexts: tuple[str, ...] = CONTEXTS,
            names: tuple[str, ...] = tuple(SHAPES)) -> list[dict[str, Any]]:
    """A row per workload, mode and start method: the best rate of `repeat` runs; exits when
    runs disagree on the data or the samples."""
    sizes = {"seed": 200, "tiny": 2000} if quick else {"seed": 10_000, "tiny": 100_000}
    sizes = {name: sizes[name] for name in names}
    rows = []
    for name, samples in sizes.items():
        path = base / name
        write(path, SHAPES[name], samples)
        for mode in MODES:
            for context in contexts:
                runs = [run_child({"path": str(path), "context": context, "mode": mode}) for _ in range(repeat)]
                if len({(r["samples"], r["digest"]) for r in runs}) != 1 or runs[0]["samples"] != samples:
                    raise SystemExit(f"{name} {context}: runs disagree or miss samples: {runs}")
                best = min(r["seconds"] for r in runs)
                rows.append({"workload": name, "samples": samples, "mode": mode, "context": context,
                             "rate": samples / best, "digest": runs[0]["digest"]})
    digests = {(r["workload"], r["digest"]) for r in rows}
    if len(digests) != len(sizes):
        raise SystemExit(f"the start methods or modes read different data: {sorted(digests)}")
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table, each start method's share of fork's in brackets."""
    contexts = tuple(dict.fromkeys(r["context"] for r in rows))
    lines = ["| epoch | mode | " + " | ".join(contexts) + " |",
             "|---|---|" + "--:|" * len(contexts)]
    for name in dict.fromkeys(r["workload"] for r in rows):
        for mode, (label, _) in MODES.items():
            cells = {r["context"]: r["rate"] for r in rows if r["workload"] == name and r["mode"] == mode}
            fork = cells["fork"]
            shown = [f"{cells['fork']:,.0f}"] + [f"{cells[c]:,.0f} ({cells[c] / fork:.2f})" for c in contexts[1:]]
            samples = next(r["samples"] for r in rows if r["workload"] == name)
            lines.append(f"| {name} {samples:,} | {label} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--contexts", default=",".join(CONTEXTS), help="start methods, fork first")
    parser.add_argument("--workloads", default=",".join(SHAPES))
    parser.add_argument("--child")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    repeat = args.repeat or (1 if args.quick else 2)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="nc-startup-") as tmp:
        rows = measure(args.quick, repeat, Path(tmp), tuple(args.contexts.split(",")), tuple(args.workloads.split(",")))
    print(f"samples/s from creating the loader to the end of the epoch (share of fork); best of {repeat}; "
          f"load {load:.1f} -> {os.getloadavg()[0]:.1f}")
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
