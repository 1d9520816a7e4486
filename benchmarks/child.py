"""One benchmark measurement per process: `python child.py SPEC.json RESULT.json`.

SPEC holds a list of tasks (one in a normal run; `--quick` runs several in one process to save
interpreter and torch start-up). Each task's result is a dict; clocks start after the imports,
right before the library opens or creates the dataset. `rss_kb` is this process's peak resident
set size (VmHWM, see `_own_peak_kb`) and `workers_rss_kb` the largest ru_maxrss of its finished
child processes (DataLoader workers), both in KiB; both count touched pages of memory-mapped
files, and a worker's count includes the pages it shares with the main process after fork.
"""

from __future__ import annotations

import gc
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from libs import LIBRARIES, probe
from workloads import Checksum, load_source, random_indices, workload_from_dict

RAW_BLOCK = 1 << 20


def _start_clock() -> float:
    """Collect garbage, then read the clock. Importing torch leaves ~170k young objects, and the
    full collection they are due for (~40 ms) would otherwise land inside whichever library's
    clock first allocates enough: a matter of import order, not of the library measured."""
    gc.collect()
    return time.perf_counter()


def _rss() -> dict[str, int]:
    return {"rss_kb": _own_peak_kb(), "workers_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}


def _own_peak_kb() -> int:
    """Peak RSS of this process's own address space (VmHWM).

    ru_maxrss of RUSAGE_SELF is not used for the process itself: Linux carries the launching
    process's peak across fork and exec into it, so every child would report at least the
    benchmark driver's peak. VmHWM is the same high-water mark, counted from the exec.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def task_probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Import each library; report versions or import errors."""
    return {name: probe(name) for name in spec["libs"]}


def task_baseline(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS after importing the library and torch, reading nothing."""
    LIBRARIES[spec["lib"]].preload(loader=True)

    return _rss()


def task_write(spec: dict[str, Any]) -> dict[str, Any]:
    """Write the whole workload with the library's writer."""
    wl, lib = workload_from_dict(spec["workload"]), LIBRARIES[spec["lib"]]
    lib.preload()
    data = load_source(wl, Path(spec["source"]))
    start = _start_clock()
    lib.write(Path(spec["out"]), wl, data, **spec.get("options", {}))
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in Path(spec["out"]).rglob("*") if p.is_file())
    return {"seconds": seconds, "samples": wl.samples, "disk_bytes": size}


def task_read(spec: dict[str, Any]) -> dict[str, Any]:
    """Read every sample in one process, no shuffle, every array digested (touched whole)."""
    wl, lib = workload_from_dict(spec["workload"]), LIBRARIES[spec["lib"]]
    lib.preload()
    check = Checksum()
    add = check.add
    start = _start_clock()
    for arrays, trial in lib.samples(Path(spec["path"]), wl, **spec.get("options", {})):
        add(arrays, (trial,))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "samples": check.count, "checksum": check.value(), **_rss()}


def task_api_read(spec: dict[str, Any]) -> dict[str, Any]:
    """Every sample through one of the library's own datasets (`Library.apis`), as a user calls
    it, in one process, every array digested; random access reads `random_reads` distinct
    samples in a seeded random order (drawn before the clock)."""
    import tempfile

    wl, lib, api = workload_from_dict(spec["workload"]), LIBRARIES[spec["lib"]], spec["api"]
    lib.preload(loader=True)
    indices = random_indices(wl, spec["random_reads"], spec["seed"]) if lib.apis[api] == "random" else None
    check = Checksum()
    add = check.add
    with tempfile.TemporaryDirectory(prefix="api-read-", dir=spec.get("scratch")) as scratch:
        start = _start_clock()
        for arrays, trial in lib.api_samples(api, Path(spec["path"]), wl, seed=spec["seed"], scratch=Path(scratch),
                                             indices=indices):
            add(arrays, (trial,))
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "samples": check.count, "checksum": check.value(), **_rss()}


def task_raw(spec: dict[str, Any]) -> dict[str, Any]:
    """Plain reads (1 MiB readinto) of the given files, from the page cache."""
    files = [Path(p) for p in spec["files"]]
    buffer = bytearray(RAW_BLOCK)
    view = memoryview(buffer)
    total = 0
    start = _start_clock()
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while True:
                n = f.readinto(view)
                if not n:
                    break
                total += n
    return {"seconds": time.perf_counter() - start, "bytes": total}


def task_floor(spec: dict[str, Any]) -> dict[str, Any]:
    """What the read measurement would show for a reader that costs nothing: every sample's
    arrays are numpy views into the (freshly mapped) shard files, built before the clock, so
    only the page faults, the first touch of the bytes and the checksum itself are timed."""
    import mmap

    from neurocodec.format import layout

    wl = workload_from_dict(spec["workload"])
    views: list[list[np.ndarray]] = []
    maps = []
    for name in spec["files"]:
        index = Path(name).with_name(layout.index_name(Path(name).name))
        rows = np.load(index).astype(np.int64)  # (samples, members, 4)
        with open(name, "rb") as f:
            maps.append(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        for row in rows:
            # An array field's .npy payload ends with the array's bytes: view exactly those.
            views.append([np.ndarray(shape, "<f4", maps[-1], int(offset + stored) - 4 * int(np.prod(shape)))
                          for (_, shape), (offset, stored) in zip(wl.fields, row[:, :2].tolist())])
    check = Checksum()
    add = check.add
    start = _start_clock()
    for trial, arrays in enumerate(views):
        add(arrays, (trial,))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "samples": check.count, "checksum": check.value()}


def task_epoch(spec: dict[str, Any]) -> dict[str, Any]:
    """One shuffled epoch through the library's DataLoader, from a fresh loader (or a restored
    state); saves the loader's state when `capture_at` samples have been delivered. `context`:
    the workers' start method. `startup_batches`: also time the arrival of that many batches
    (by then every worker has handed one over), from which `steady_s` / `steady_samples` count."""
    wl, lib = workload_from_dict(spec["workload"]), LIBRARIES[spec["lib"]]
    lib.preload(loader=True)
    capture_at, stop_after = spec.get("capture_at"), spec.get("stop_after")
    startup = spec.get("startup_batches")
    check = Checksum()
    if spec.get("context") == "forkserver":
        # As for a training script that imports torch and the library at its top: the fork
        # server imports the main module (and these) once, and forks every worker from it.
        import multiprocessing

        multiprocessing.set_forkserver_preload(["__main__", "torch", lib.module])
    start = _start_clock()
    loader = lib.loader(Path(spec["path"]), wl, batch_size=spec["batch_size"], workers=spec["workers"],
                        seed=spec["seed"], context=spec.get("context"))
    if "resume_position" in spec:
        lib.load_state_dict(loader, lib.seek_state(loader, spec["resume_position"]))
    elif "resume_state" in spec:
        lib.load_state_dict(loader, json.loads(Path(spec["resume_state"]).read_text()))
    first = steady = None
    first_count = steady_count = batches = 0
    for batch in loader:
        arrays, trials = lib.batch(batch, wl)
        check.add(arrays, trials)
        batches += 1
        if first is None:
            first = time.perf_counter() - start
            first_count = check.count
        if batches == startup:
            steady, steady_count = time.perf_counter() - start, check.count
        if capture_at is not None and check.count == capture_at:
            Path(spec["state_out"]).write_text(json.dumps(lib.state_dict(loader)))
        if stop_after is not None and check.count >= stop_after:
            break
    total = time.perf_counter() - start
    del loader
    return {"first_batch_s": first, "first_batch_samples": first_count if first is not None else 0,
            "steady_s": steady, "steady_samples": steady_count,
            "seconds": total, "samples": check.count, "checksum": check.value(), **_rss()}


def task_first_batch(spec: dict[str, Any]) -> dict[str, Any]:
    """Time to the first batch of a fresh or restored loader (then stop)."""
    return task_epoch({**spec, "stop_after": 1})


def task_nwb_make(spec: dict[str, Any]) -> dict[str, Any]:
    """Generate the NWB session file and its copies (not timed)."""
    from nwbdata import make_session

    return make_session(Path(spec["path"]), seconds=spec["seconds"], copies=[Path(p) for p in spec["copies"]])


def task_nwb_modalities(spec: dict[str, Any]) -> dict[str, Any]:
    """Which of the benchmark's modalities the installed plugins can extract from NWB files."""
    from neurocodec.plugin.manager import default_registry

    registry = default_registry()
    return {"modalities": [m for m in spec["modalities"] if registry.nwb_extractor(m) is not None]}


def task_nwb_convert(spec: dict[str, Any]) -> dict[str, Any]:
    """Convert NWB files with NWBToWebDatasetConverter through its public API (fsync on, the
    given modalities, overlap and workers), from creating the converter to finalize()."""
    import pynwb  # noqa: F401  (imported lazily by the converter; imports are not part of its rate)
    import tqdm.auto  # noqa: F401  (the converter's progress bar: ~60 ms of asyncio imports)

    from neurocodec.nwb.converter import NWBToWebDatasetConverter

    LIBRARIES["neurocodec"].preload()
    start = _start_clock()
    converter = NWBToWebDatasetConverter(spec["out"], shard_size=spec["shard_size"], modalities=spec["modalities"],
                                         bin_size_ms=10.0, sequence_length=100, overlap=spec["overlap"],
                                         workers=spec["workers"], progress=False)
    converter.convert_nwb_files(spec["paths"])
    summary = converter.finalize()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "samples": summary["samples"], "bytes": summary["bytes"], **_rss()}


def _worker_ready() -> int:
    """In a spawned worker: import what a conversion part imports and load the plugins."""
    import os

    import pynwb  # noqa: F401

    import neurocodec.nwb.part  # noqa: F401
    from neurocodec.plugin.manager import default_registry

    default_registry()
    return os.getpid()


def task_spawn_pool(spec: dict[str, Any]) -> dict[str, Any]:
    """Start `workers` spawned processes as the converter does, each importing pynwb and
    neurocodec and loading the plugins, and stop them: what workers cost before any file."""
    import concurrent.futures
    import multiprocessing

    start = _start_clock()
    with concurrent.futures.ProcessPoolExecutor(spec["workers"], mp_context=multiprocessing.get_context("spawn")) as pool:
        pids = {f.result() for f in [pool.submit(_worker_ready) for _ in range(spec["workers"])]}
    return {"seconds": time.perf_counter() - start, "processes": len(pids)}


def task_hdf5_read(spec: dict[str, Any]) -> dict[str, Any]:
    """Read the arrays of the given modalities whole with h5py (the raw HDF5 read rate)."""
    import h5py  # noqa: F401

    from nwbdata import read_hdf5

    start = _start_clock()
    nbytes = read_hdf5(Path(spec["path"]), spec["modalities"])
    return {"seconds": time.perf_counter() - start, "bytes": nbytes}


from cold_stage import task_cold  # noqa: E402,F401  (stage `cold`: registered like the tasks above)

TASKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    name[len("task_"):]: fn for name, fn in globals().items() if name.startswith("task_")
}


def main(argv: list[str]) -> int:
    """Run the tasks of SPEC in order; write their results (or errors) to RESULT."""
    specs = json.loads(Path(argv[1]).read_text())
    results = []
    for spec in specs:
        try:
            results.append({"ok": True, **TASKS[spec["task"]](spec)})
        except Exception as exc:
            import traceback

            traceback.print_exc()
            results.append({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    Path(argv[2]).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main(sys.argv))
