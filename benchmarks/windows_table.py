"""Load-time windows from chunks against pre-cut windows: bytes on disk and loader rate (issue 15, item 5).

Run: `python benchmarks/windows_table.py [--quick] [--json out.json] [--workdir DIR --keep]`.

One synthetic session written with pynwb (`make_session`: Poisson units at 5-20 Hz with their
observation intervals, an int16 LFP with a conversion factor at 1 kHz as acquisition systems
store it, a 2-d position at 100 Hz) is converted with `NWBToWebDatasetConverter` (neural codecs,
10 ms bins) twice, or more:

- pre-cut: 1 s windows (100 bins) with overlap 0.5, what users convert today;
- chunks: `chunk_seconds=10`, no overlap, read in 1 s windows cut at load time (`window_ms=1000`),
  and `chunk_seconds=1` as an extra row showing what the chunk length costs.

Bytes are the dataset's shard files, their indexes and the manifest. The loader rows run
`create_webdataset_dataloader` (batch 32, 2 workers, shuffle, seed 0, fork), each configuration in
a fresh process per repetition (repetitions interleaved, best kept; with --quick forked from one
that has imported the libraries, see forked.py), `--epochs` epochs per process.
samples/s counts the windows delivered after each epoch's first batch over the time after it
(the first batch and the workers' start are in the "first batch" column); "recording s/s" is
samples/s times the recording seconds an epoch covers (the union of its windows) over the
windows in that epoch: a pre-cut epoch at overlap 0.5 reads every second twice.

Before measuring, the windows are checked: every grid-mode window of the chunked dataset equals
the pre-cut window at the same start time field by field, and every jittered window of a
shuffled epoch holds exactly the source file's LFP rows (h5py, times the conversion as the
converter computes it) and the epoch's windows tile the recording. The exit status is 1 when a
check fails.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from filter_chains import UV_PER_BIT, eeg_like  # noqa: E402
from forked import ForkServer  # noqa: E402
from report import _cpu, run_child  # noqa: E402

MODALITIES = ("spikes", "lfp", "behavior")
LFP_PATH = "processing/ecephys/LFP/lfp/data"
LFP_RATE, POSITION_RATE, WINDOW_MS, BIN_MS = 1000.0, 100.0, 1000, 10.0
BATCH, WORKERS = 32, 2
EVENTS = {"spikes": {"as": "events"}}


@attrs.frozen
class Size:
    """The session's size: seconds, units, LFP channels."""

    seconds: float
    units: int
    channels: int


DEFAULT, QUICK = Size(600.0, 100, 64), Size(120.0, 16, 16)
PRECUT = "pre-cut 1 s, overlap 0.5"


def chunked(seconds: float) -> str:
    """The name of the dataset converted with `chunk_seconds=seconds`."""
    return f"chunks {seconds:g} s"


LOADERS: list[tuple[str, str, dict[str, Any], str]] = [
    # (row, dataset, loader arguments, the row it is compared with)
    ("pre-cut", PRECUT, {}, "pre-cut"),
    ("pre-cut, spikes as events", PRECUT, {"decode": EVENTS}, "pre-cut, spikes as events"),
    ("window 1 s, jitter", chunked(10), {"window_ms": WINDOW_MS, "window_mode": "jitter"}, "pre-cut"),
    ("window 1 s, grid", chunked(10), {"window_ms": WINDOW_MS, "window_mode": "grid"}, "pre-cut"),
    ("window 1 s, jitter, spikes as events", chunked(10),
     {"window_ms": WINDOW_MS, "window_mode": "jitter", "decode": EVENTS}, "pre-cut, spikes as events"),
    ("window 1 s, jitter", chunked(1), {"window_ms": WINDOW_MS, "window_mode": "jitter"}, "pre-cut"),
]


def make_session(path: Path, size: Size, seed: int = 0) -> Path:
    """Write the session with pynwb: Poisson units with observation intervals, an int16 LFP
    (`filter_chains.eeg_like`: 1/f background, line noise) with its conversion to volts, and a
    float32 position random walk in processing/behavior."""
    import nwbfiles as nf
    from pynwb.behavior import Position

    rng = np.random.default_rng(seed)
    t = size.seconds
    spikes = [np.sort(rng.uniform(0.0, t, rng.poisson(rate * t))) for rate in rng.uniform(5.0, 20.0, size.units)]
    nwb = nf.new_file(identifier="windows-bench", session_id="windows-bench", subject_id="mouse0")
    nf.add_units(nwb, spikes, [[[0.0, t]]] * size.units)
    lfp = eeg_like(t, size.channels, LFP_RATE, seed=seed)
    nf.add_lfp(nwb, nf.electrical_series(nwb, "lfp", lfp, rate=LFP_RATE, conversion=UV_PER_BIT * 1e-6))
    xy = np.cumsum(rng.standard_normal((int(t * POSITION_RATE), 2)), axis=0).astype(np.float32)
    nf.behavior_module(nwb).add(Position(spatial_series=nf.spatial_series("xy", xy, rate=POSITION_RATE)))
    return nf.write(nwb, path)


def convert(source: Path, out: Path, **window: Any) -> dict[str, Any]:
    """Convert `source` into `out` (neural codecs, 10 ms bins); the manifest with the seconds taken."""
    from neurocodec.format.home import manifest_path
    from neurocodec.nwb.converter import NWBToWebDatasetConverter

    start = time.perf_counter()
    with NWBToWebDatasetConverter(out, modalities=list(MODALITIES), bin_size_ms=BIN_MS, progress=False,
                                  fsync=False, overwrite=True, **window) as converter:
        converter.convert_nwb_files([source])
        converter.finalize()
    seconds = time.perf_counter() - start
    return {**json.loads(manifest_path(out).read_text()), "seconds": seconds}


def disk_bytes(path: Path) -> dict[str, int]:
    """Bytes of the shard files, their indexes and the manifest."""
    from neurocodec.format.home import manifest_path

    manifest = json.loads(manifest_path(path).read_text())
    shards = sum(s["bytes"] for s in manifest["shards"])
    index = sum(s["index_bytes"] for s in manifest["shards"])
    meta = manifest_path(path).stat().st_size
    return {"shards": shards, "index": index, "manifest": meta, "total": shards + index + meta}


def build_datasets(source: Path, work: Path, chunks: list[float]) -> dict[str, dict[str, Any]]:
    """Convert the session pre-cut and chunked; name -> path, stored samples, bytes."""
    plans = {PRECUT: {"sequence_length": round(WINDOW_MS / BIN_MS), "overlap": 0.5},
             **{chunked(c): {"chunk_seconds": c} for c in chunks}}
    out = {}
    for number, (name, window) in enumerate(plans.items()):
        path = work / f"dataset{number}"
        manifest = convert(source, path, **window)
        out[name] = {"dataset": name, "path": str(path), "stored_samples": manifest["total_samples"],
                     "convert_s": manifest["seconds"], "bytes": disk_bytes(path)}
    return out


def check_grid(precut: str, chunks: str) -> dict[str, int]:
    """Grid windows of the chunked dataset against the pre-cut windows at the same start times,
    every array field; counts of windows, matched start times and equal windows."""
    from neurocodec import Dataset
    from neurocodec.loader.datasets import WebDatasetLoader

    with Dataset(precut) as ds:
        stored = {round(s["metadata"]["start_time"] * 1000): s for s in ds}
    windows = matched = equal = 0
    for window in WebDatasetLoader(chunks, shuffle=False, window_ms=WINDOW_MS, window_mode="grid"):
        windows += 1
        other = stored.get(round(window["metadata"]["start_time"] * 1000))
        if other is None:
            continue
        matched += 1
        fields = {k for k, v in other.items() if isinstance(v, np.ndarray)}
        same = fields == {k for k in window if k not in ("metadata", "__key__")}
        equal += same and all(np.array_equal(window[k].numpy(), other[k]) for k in fields)
    return {"windows": windows, "matched": matched, "equal": equal}


def check_jitter(chunks: str, source: Path) -> dict[str, Any]:
    """A shuffled jitter epoch: each window's LFP against the source rows, and the windows tiling
    the recording (consecutive starts one window apart)."""
    import h5py

    from neurocodec.loader.datasets import WebDatasetLoader

    with h5py.File(source, "r") as f:
        raw = f[LFP_PATH][()]
        conversion = float(f[LFP_PATH].attrs["conversion"])
    windows = equal = 0
    starts = []
    for window in WebDatasetLoader(chunks, shuffle=True, seed=0, window_ms=WINDOW_MS, window_mode="jitter"):
        start = window["metadata"]["start_time"]
        first = round(start * LFP_RATE)
        expected = (raw[first:first + round(WINDOW_MS)].astype(np.float64) * conversion).astype(np.float32)
        windows += 1
        equal += np.array_equal(window["lfp"].numpy(), expected)
        starts.append(start)
    steps = np.diff(np.sort(starts))
    return {"windows": windows, "lfp_equal": equal,
            "tiled": bool(len(steps) and np.allclose(steps, WINDOW_MS / 1000, rtol=0, atol=1e-6)),
            "first_start": min(starts, default=None)}


def covered_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, stop) intervals."""
    total, end = 0.0, -np.inf
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: `epochs` epochs through `create_webdataset_dataloader`, timed per epoch."""
    from libs import LIBRARIES
    from neurocodec.loader.dataloader import create_webdataset_dataloader

    LIBRARIES["neurocodec"].preload(loader=True)  # torch and the plugins' modules: imports are not timed
    loader = create_webdataset_dataloader(spec["path"], batch_size=BATCH, num_workers=WORKERS, shuffle=True,
                                          seed=0, **spec["kwargs"])
    epochs = []
    for _ in range(spec["epochs"]):
        gc.collect()
        start = time.perf_counter()
        first_at, first, samples, spans = None, 0, 0, []
        for batch in loader:
            meta = batch["metadata"]
            if first_at is None:
                first_at, first = time.perf_counter(), len(meta)
            samples += len(meta)
            spans.extend((m["start_time"], m["stop_time"]) for m in meta)
        end = time.perf_counter()
        epochs.append({"samples": samples, "first_batch_s": first_at - start, "after_first": samples - first,
                       "steady_s": end - first_at, "covered_s": covered_seconds(spans)})
    return {"epochs": epochs}


def measure(spec: dict[str, Any], forks: ForkServer | None = None) -> dict[str, Any]:
    """`child(spec)` in a fresh Python process (or one forked from `forks`)."""
    return run_child(str(Path(__file__).resolve()), spec, forks)


def summarize(row: str, dataset: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One loader row from its runs (the best run by samples/s)."""
    def rate(run: dict[str, Any]) -> float:
        return sum(e["after_first"] for e in run["epochs"]) / sum(e["steady_s"] for e in run["epochs"])
    best = max(runs, key=rate)
    epochs = best["epochs"]
    windows = sum(e["samples"] for e in epochs) / len(epochs)
    covered = sum(e["covered_s"] for e in epochs) / len(epochs)
    return {"row": row, "dataset": dataset, "windows_per_epoch": windows, "covered_s_per_epoch": covered,
            "samples_s": rate(best), "recording_s_s": rate(best) * covered / windows,
            "first_batch_s": min(e["first_batch_s"] for e in epochs), "runs": [rate(r) for r in runs]}


def run_loaders(datasets: dict[str, dict[str, Any]], epochs: int, repeat: int,
                forks: ForkServer | None = None) -> list[dict[str, Any]]:
    """Every loader row, each repetition in fresh processes (or forked from `forks`), rows
    interleaved within a repetition."""
    plans = [plan for plan in LOADERS if plan[1] in datasets]
    runs: list[list[dict[str, Any]]] = [[] for _ in plans]
    for _ in range(repeat):
        for number, (row, name, kwargs, _) in enumerate(plans):
            runs[number].append(measure({"row": row, "path": datasets[name]["path"], "kwargs": kwargs,
                                         "epochs": epochs}, forks))
    rows = [summarize(row, name, r) for (row, name, _, _), r in zip(plans, runs)]
    by_key = {(r["row"], r["dataset"]): r for r in rows}
    for r, (_, _, _, against) in zip(rows, plans):
        base = by_key[(against, PRECUT)]
        r["vs"] = against
        r["samples_ratio"] = r["samples_s"] / base["samples_s"]
        r["recording_ratio"] = r["recording_s_s"] / base["recording_s_s"]
    return rows


def render(datasets: dict[str, dict[str, Any]], rows: list[dict[str, Any]], seconds: float) -> str:
    """Two markdown tables: bytes on disk, then the loader rows."""
    precut = datasets[PRECUT]["bytes"]["total"]
    lines = ["| dataset | stored samples | shard bytes | index bytes | manifest bytes | total MB | KB per recording s "
             "| ÷ pre-cut |", "|---|--:|--:|--:|--:|--:|--:|--:|"]
    for d in datasets.values():
        b = d["bytes"]
        lines.append(f"| {d['dataset']} | {d['stored_samples']:,} | {b['shards']:,} | {b['index']:,} | "
                     f"{b['manifest']:,} | {b['total'] / 1e6:.2f} | {b['total'] / 1e3 / seconds:.1f} | "
                     f"{b['total'] / precut:.2f} |")
    lines += ["", "| dataset | loading | windows/epoch | samples/s | ÷ pre-cut | recording s/s | ÷ pre-cut "
              "| first batch s |", "|---|---|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['row']} | {r['windows_per_epoch']:,.0f} | {r['samples_s']:,.0f} | "
                     f"{r['samples_ratio']:.2f} | {r['recording_s_s']:,.0f} | {r['recording_ratio']:.2f} | "
                     f"{r['first_batch_s']:.3f} |")
    return "\n".join(lines)


def goal(datasets: dict[str, dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's goal, judged on the 10 s chunks read in jittered 1 s windows against pre-cut."""
    jitter = next(r for r in rows if r["dataset"] == chunked(10) and r["row"] == "window 1 s, jitter")
    bytes_ratio = datasets[chunked(10)]["bytes"]["total"] / datasets[PRECUT]["bytes"]["total"]
    return {"bytes_ratio": bytes_ratio, "samples_ratio": jitter["samples_ratio"],
            "recording_ratio": jitter["recording_ratio"], "met": jitter["samples_ratio"] >= 0.8}


def checks_ok(checks: dict[str, Any]) -> bool:
    """Whether every window check passed."""
    grid, jitter = checks["grid"], checks["jitter"]
    return (grid["windows"] > 0 and grid["windows"] == grid["matched"] == grid["equal"]
            and jitter["windows"] > 0 and jitter["lfp_equal"] == jitter["windows"] and jitter["tiled"])


def main(argv: list[str] | None = None) -> int:
    """Make the session, convert it, check the windows, measure every loader row, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 2-minute session, 1 epoch, 1 repetition")
    parser.add_argument("--seconds", type=float, help=f"recording length (default {DEFAULT.seconds:g})")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per process (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="processes per row, best kept (default 3)")
    parser.add_argument("--json", type=Path, help="also write every number as JSON here")
    parser.add_argument("--workdir", type=Path, help="where the session and datasets go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    size = QUICK if args.quick else DEFAULT
    if args.seconds:
        size = attrs.evolve(size, seconds=args.seconds)
    epochs, repeat = (1, 1) if args.quick else (args.epochs, args.repeat)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="neurocodec-windows-"))
    work.mkdir(parents=True, exist_ok=True)
    forks = ForkServer(work / "forkserver.log") if args.quick else None
    try:
        result = run(work, size, epochs, repeat, forks)
    finally:
        if forks is not None:
            forks.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["command"] = " ".join(["python benchmarks/windows_table.py", *(argv if argv is not None else sys.argv[1:])])
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0 if result["checks_ok"] else 1


def run(work: Path, size: Size, epochs: int, repeat: int, forks: ForkServer | None = None) -> dict[str, Any]:
    """Everything the tables hold (loader processes forked from `forks` when given)."""
    load = [os.getloadavg()[0]]
    source = make_session(work / "session.nwb", size)
    datasets = build_datasets(source, work, [10.0, 1.0])
    checks = {"grid": check_grid(datasets[PRECUT]["path"], datasets[chunked(10)]["path"]),
              "jitter": check_jitter(datasets[chunked(10)]["path"], source)}
    rows = run_loaders(datasets, epochs, repeat, forks) if checks_ok(checks) else []
    load.append(os.getloadavg()[0])
    return {"size": attrs.asdict(size), "epochs": epochs, "repeat": repeat, "datasets": datasets, "rows": rows,
            "checks": checks, "checks_ok": checks_ok(checks), "goal": goal(datasets, rows) if rows else None,
            "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
                        "load_1min": load}}


def report(result: dict[str, Any]) -> str:
    """The printed report: settings, checks, the two tables, the goal."""
    size, checks = result["size"], result["checks"]
    m = result["machine"]
    head = [f"load-time windows against pre-cut windows — `{result['command']}`",
            f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; load (1 min) at start / end: "
            f"{m['load_1min'][0]:.1f} / {m['load_1min'][1]:.1f}",
            f"session: {size['seconds']:g} s, {size['units']} units, LFP {size['channels']} ch int16 @ 1 kHz, "
            f"position @ 100 Hz; loader: batch {BATCH}, {WORKERS} workers, shuffle, "
            f"{result['epochs']} epoch(s) per process, best of {result['repeat']}",
            f"checks: grid windows equal to pre-cut: {checks['grid']['equal']}/{checks['grid']['windows']}; "
            f"jittered windows' LFP equal to the source: {checks['jitter']['lfp_equal']}/"
            f"{checks['jitter']['windows']}, tiled: {checks['jitter']['tiled']}"
            + ("" if result["checks_ok"] else " — MISMATCH"), ""]
    if not result["rows"]:
        return "\n".join(head + ["loader rows not measured: a window check failed"])
    g = result["goal"]
    tail = ["", f"goal (chunks 10 s, jittered 1 s windows against pre-cut): bytes {g['bytes_ratio']:.2f} of pre-cut; "
            f"samples/s {g['samples_ratio']:.2f}x (goal >= 0.80: {'met' if g['met'] else 'not met'}); "
            f"recording s/s {g['recording_ratio']:.2f}x"]
    return "\n".join(head + [render(result["datasets"], result["rows"], size["seconds"])] + tail)


if __name__ == "__main__":
    sys.exit(main())
