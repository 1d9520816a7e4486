"""A loader over a mix of datasets against one over the same data as a single dataset (issue 16,
item 5): samples/s through `create_webdataset_dataloader`, and the time and memory of resuming a
mixed loader at 90% of an epoch against resuming at its start.

Run: `python benchmarks/mixing_table.py [--quick] [--json out.json] [--workdir DIR]`.

The seed workload: samples of spikes (100, 96) and behavior (100, 2), float32, written with
`create_shards_from_arrays` as three datasets (3/6, 2/6 and 1/6 of the samples) and as one
dataset holding all of them. Each measurement runs in a fresh process, best of `--repeat`
(with --quick: forked from one that has imported the libraries, see forked.py).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forked import ForkServer  # noqa: E402
from report import run_child  # noqa: E402

BATCH, WORKERS = 32, 2
SHARES = (3, 2, 1)


def write_datasets(work: Path, samples: int) -> dict[str, Any]:
    """The three sources and the single dataset holding the same samples."""
    from neurocodec import create_shards_from_arrays

    rng = np.random.default_rng(0)
    spikes = rng.poisson(0.3, (samples, 100, 96)).astype(np.float32)
    behavior = rng.standard_normal((samples, 100, 2)).astype(np.float32)
    edges = np.cumsum([0] + [samples * s // sum(SHARES) for s in SHARES])
    edges[-1] = samples
    sources = []
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        path = work / f"source{i}"
        create_shards_from_arrays(path, {"spikes": spikes[a:b], "behavior": behavior[a:b]}, shard_size=1000,
                                  progress=False)
        sources.append(str(path))
    single = work / "single"
    create_shards_from_arrays(single, {"spikes": spikes, "behavior": behavior}, shard_size=1000, progress=False)
    return {"sources": sources, "single": str(single), "sizes": np.diff(edges).tolist()}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: an epoch's samples/s after the first batch, or the cost of resuming."""
    from libs import LIBRARIES
    from neurocodec.loader.dataloader import create_webdataset_dataloader

    LIBRARIES["neurocodec"].preload(loader=True)
    if spec["task"] == "resume":
        return resume_cost(spec, create_webdataset_dataloader)
    loader = create_webdataset_dataloader(spec["path"], batch_size=BATCH, num_workers=WORKERS, seed=0,
                                          **spec.get("kwargs", {}))
    rates = []
    for _ in range(spec["epochs"]):
        gc.collect()
        first_at, samples = None, 0
        for batch in loader:
            if first_at is None:
                first_at = time.perf_counter()
                continue
            samples += len(batch["__key__"])
        rates.append(samples / (time.perf_counter() - first_at))
    return {"samples_s": max(rates)}


def resume_cost(spec: dict[str, Any], create: Any) -> dict[str, Any]:
    """Seconds from making a loader to holding its first batch after `load_state_dict` of a state
    at `fraction` of the epoch, and this process's peak RSS (no workers: the main process's cost)."""
    gc.collect()
    start = time.perf_counter()
    loader = create(spec["path"], batch_size=BATCH, num_workers=0, seed=0, **spec.get("kwargs", {}))
    state = loader.state_dict()
    state["position"] = int(state["total_samples"] * spec["fraction"]) // BATCH * BATCH
    loader.load_state_dict(state)
    next(iter(loader))
    from child import _own_peak_kb

    return {"seconds": time.perf_counter() - start, "peak_rss_kb": _own_peak_kb()}


def measure(spec: dict[str, Any], forks: ForkServer | None = None) -> dict[str, Any]:
    """`child(spec)` in a fresh Python process (or one forked from `forks`)."""
    return run_child(str(Path(__file__).resolve()), spec, forks)


def check_same_samples(data: dict[str, Any]) -> bool:
    """The mix reads every sample of the sources once per epoch, as the single dataset does."""
    from neurocodec import Dataset, WebDatasetLoader

    mixed = WebDatasetLoader(data["sources"], shuffle=True, seed=0, buffer_size=64)
    seen = sorted(s["spikes"].numpy().tobytes() for s in mixed)
    with Dataset(data["single"]) as ds:
        return seen == sorted(s["spikes"].tobytes() for s in ds)


def run(data: dict[str, Any], epochs: int, repeat: int, quick: bool = False,
        forks: ForkServer | None = None) -> dict[str, Any]:
    """Loader rows (interleaved, fresh processes or forked from `forks`, best kept) and resume
    rows (`quick`: the weighted row and the single dataset's resume left out, to keep the smoke
    test short)."""
    specs = {"single dataset": {"path": data["single"]},
             "mix of 3": {"path": data["sources"]},
             "mix of 3, weights 1:1:1": {"path": data["sources"], "kwargs": {"weights": [1, 1, 1]}}}
    if quick:
        del specs["mix of 3, weights 1:1:1"]
    rows: dict[str, list[float]] = {name: [] for name in specs}
    for _ in range(repeat):
        for name, spec in specs.items():
            rows[name].append(measure({"task": "epochs", "epochs": epochs, **spec}, forks)["samples_s"])
    resume = {}
    for name in (("mix of 3",) if quick else ("single dataset", "mix of 3")):
        for fraction in (0.0, 0.9):
            runs = [measure({"task": "resume", "fraction": fraction, **specs[name]}, forks) for _ in range(repeat)]
            resume[(name, fraction)] = min(runs, key=lambda r: r["seconds"])
    return {"rows": rows, "resume": resume}


def render(data: dict[str, Any], results: dict[str, Any], command: str) -> str:
    """The markdown tables."""
    rows, resume = results["rows"], results["resume"]
    base = max(rows["single dataset"])
    lines = [f"mixing datasets — `{command}`",
             f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}; "
             f"sources of {data['sizes']} samples (spikes (100, 96) + behavior (100, 2) float32); "
             f"loader: batch {BATCH}, {WORKERS} workers, shuffle",
             "", "| loader | samples/s (best) | ÷ single | runs |", "|---|--:|--:|---|"]
    for name, runs in rows.items():
        lines.append(f"| {name} | {max(runs):,.0f} | {max(runs) / base:.2f} | "
                     + ", ".join(f"{r:,.0f}" for r in runs) + " |")
    lines += ["", "| loader | resumed at | seconds to the first batch | peak RSS MB |", "|---|--:|--:|--:|"]
    for (name, fraction), r in resume.items():
        lines.append(f"| {name} | {fraction:.0%} | {r['seconds']:.3f} | {r['peak_rss_kb'] / 1024:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Build the datasets, check them, measure, print (and with --json write) the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run (seconds): for the smoke test")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--workdir", type=Path, help="where the datasets go (default: a temp dir, removed)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    work = args.workdir or Path(tempfile.mkdtemp(prefix="neurocodec-mixing-"))
    work.mkdir(parents=True, exist_ok=True)
    forks = ForkServer(work / "forkserver.log") if args.quick else None
    try:
        data = write_datasets(work, 600 if args.quick else 12_000)
        same = check_same_samples(data)
        print(f"check: the mix reads every sample of the single dataset once per epoch: {same}")
        if not same:
            return 1
        results = run(data, 1 if args.quick else args.epochs, 1 if args.quick else args.repeat, args.quick, forks)
        command = "python benchmarks/mixing_table.py" + (" --quick" if args.quick else "")
        print(render(data, results, command))
        if args.json:
            args.json.write_text(json.dumps({"sizes": data["sizes"], "rows": results["rows"],
                                             "resume": [{"loader": n, "fraction": f, **r}
                                                        for (n, f), r in results["resume"].items()]}, indent=1))
    finally:
        if forks is not None:
            forks.close()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
