"""Stage `cold` (issue 18 point 3): reading with the page cache dropped before each run.

For the seed and lfp workloads, each run in a process of its own (with --quick, a workload's runs
share one forked process): the libraries are imported, then the dataset's pages are dropped
from the page cache, then the clock starts. Dropped with `echo 3 > /proc/sys/vm/drop_caches`
where this process may (root), else with `posix_fadvise(POSIX_FADV_DONTNEED)` on every file of
the dataset read (which needs no privilege); each row's note says which. --quick always uses
fadvise (a system-wide drop costs a second and evicts everyone's cache), runs a workload's
tasks in one forked process and the DataLoader rows only for neurocodec over seed.

Rows: a raw sequential read of neurocodec's shard files (1 MiB `readinto`, the ceiling);
neurocodec's `Dataset` in stored order, `WebDatasetLoader` (shuffle off and on) and
`create_webdataset_dataloader` (batch 32, 2 workers, shuffle), each also with readahead off
(NEUROCODEC_READAHEAD_BYTES=0), to show what readahead buys; litdata's `StreamingDataset` and
webdataset's `WebDataset` (shuffle off and on) and their DataLoaders. Every row counts the
workload's array bytes (MB/s) over its time, so "% of raw" is the raw read's time over the row's.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from report import NC, Row
from workloads import Checksum, Workload, expected_checksum, workload_from_dict, workload_to_dict

BATCH, WORKERS, SEED = 32, 2, 0
RAW_BLOCK = 1 << 20
READS = (("ordered", "iterate in stored order"), ("shuffled", "iterate shuffled"))
LOADER = f"DataLoader (batch {BATCH}, {WORKERS} workers, shuffle)"
RAW = "raw cold read"
"""The raw read's label (not the warm stages' "raw file read")."""
GOAL = 0.8
"""neurocodec's cold reads at least 80% of the raw cold read rate."""


class ColdStage:
    """Runs the stage on a `bench.Bench` and adds its rows and goals to the bench's report."""

    def __init__(self, bench: Any) -> None:
        self.bench, self.runner, self.report = bench, bench.runner, bench.report
        self.repeat, self.quick = bench.repeat, bench.args.quick

    def run(self) -> None:
        """Both workloads; the goals from what they measured."""
        for name in ("seed", "lfp"):
            self.workload(self.bench.wls[name])

    def runs(self, wl: Workload) -> list[dict[str, Any]]:
        """One spec per row: (library, API, readahead) over that library's dataset."""
        from libs import LIBRARIES

        base = {"task": "cold", "workload": workload_to_dict(wl), "seed": SEED, "quick": self.quick}
        nc_path = self.bench.datasets[(wl.name, NC)]
        specs = [{**base, "lib": NC, "api": "raw", "path": str(nc_path),
                  "files": sorted(str(p) for p in nc_path.glob("shard_*.tar"))}]
        for lib in [lib for lib in self.bench.libs if (wl.name, lib) in self.bench.datasets]:
            apis = [api for api, how in LIBRARIES[lib].apis.items() if how in dict(READS)]
            # --quick (the smoke test): DataLoader workers cost a fork each, so only neurocodec's
            # DataLoader runs, over the seed workload.
            if not self.quick or (lib == NC and wl.name == "seed"):
                apis.append(LOADER)
            if lib == NC:
                apis = [api for api in apis if api != "ResumableWebDatasetLoader"]
            for api in apis:
                spec = {**base, "lib": lib, "api": api, "path": str(self.bench.datasets[(wl.name, lib)])}
                specs.append(spec)
                if lib == NC:
                    specs.append({**spec, "readahead": False})
        return specs

    def workload(self, wl: Workload) -> None:
        """Every run of `wl`, best of `repeat`; rows in the report."""
        from bench import best

        self.bench.ensure_datasets(wl, self.bench.libs)
        if (wl.name, NC) not in self.bench.datasets:
            return
        specs = self.runs(wl)
        results: list[list[dict[str, Any]]] = [[] for _ in specs]
        for _ in range(self.repeat):
            for i, result in enumerate(self.runner.run(specs)):
                results[i].append(result)
        expected = expected_checksum(wl, self.bench.source(wl))
        rows = [self._row(wl, spec, best(found), expected) for spec, found in zip(specs, results)]
        raw = rows[0]
        for row in rows:
            if row.value and raw.value:
                row.pct_raw = 100.0 if row is raw else 100.0 * row.value / raw.value
        _ratios(rows)
        self.report.rows += rows
        self.report.guide_goals.update(cold_goals(rows, wl))

    def _row(self, wl: Workload, spec: dict[str, Any], result: dict[str, Any] | None, expected: str) -> Row:
        section = f"{wl.name}: {wl.samples} samples, page cache dropped before each run (cold)"
        measure, label = _names(self.report, spec)
        if result is None:
            return Row(section, measure, label, None, "", note="failed (see log)", fixed=True)
        rate = wl.samples / result["seconds"]
        if spec["api"] == "raw":
            return Row(section, measure, label, rate, "samples/s", result["bytes"] / result["seconds"] / 1e6,
                       note=f"the ceiling, MB/s of file bytes; dropped by {result['dropped']}", fixed=True)
        note = self.report._check(f"{wl.name} cold {label}", result.get("checksum"), expected)
        return Row(section, measure, label, rate, "samples/s", rate * wl.array_bytes / 1e6,
                   rss=self.report._rss(result, workers=spec["api"] == LOADER),
                   note=f"{note}; dropped by {result['dropped']}", fixed=True)


def _names(report: Any, spec: dict[str, Any]) -> tuple[str, str]:
    """(measure, library label) of a spec's row."""
    from libs import LIBRARIES

    api = spec["api"]
    if api == "raw":
        return "cold: raw sequential read (1 MiB readinto)", RAW
    how = "loader" if api == LOADER else LIBRARIES[spec["lib"]].apis[api]
    measure = f"cold: {LOADER}" if how == "loader" else f"cold: {dict(READS)[how]}"
    label = f"{report.label(spec['lib'])} {'DataLoader' if how == 'loader' else api}"
    return measure, label + (" readahead off" if spec.get("readahead") is False else "")


def _ratios(rows: list[Row]) -> None:
    """Each peer's ratio against neurocodec's row of the same measure (readahead on); each
    readahead-off row's share of the row with readahead on, in its note."""
    for row in rows:
        if row.value is None or row.library == RAW:
            continue
        mine = [r for r in rows if r.measure == row.measure and r.library.startswith(NC) and r.value
                and not r.library.endswith("readahead off")]
        if not row.library.startswith(NC):
            if mine:
                row.ratio = f"{mine[0].value / row.value:.2f}×"
        elif row.library.endswith("readahead off"):
            on = [r for r in mine if r.library == row.library[: -len(" readahead off")]]
            if on:
                row.note += f"; readahead on is {on[0].value / row.value:.2f}× this"


def cold_goals(rows: list[Row], wl: Workload) -> dict[str, float | None]:
    """neurocodec's cold rates as a share of the raw cold read (goal >= 0.8), readahead on."""
    goals = {}
    for row in rows:
        if row.library.startswith(NC) and not row.library.endswith("readahead off"):
            api = row.library.split(" ", 2)[-1]
            share = None if row.pct_raw is None else row.pct_raw / 100
            goals[f"cold {wl.name}: {api} / raw cold read (goal >= {GOAL})"] = share
    return goals


# -- in the child process (child.py runs it as the task `cold`) ------------------------------------

def drop_cache(files: list[Path], quick: bool) -> str:
    """Drop `files` from the page cache: every clean page system-wide where permitted (not with
    `quick`), else each file's with fadvise DONTNEED. Returns which was done."""
    os.sync()
    if not quick:
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            return "drop_caches"
        except OSError:
            pass
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return "fadvise DONTNEED"


def task_cold(spec: dict[str, Any]) -> dict[str, Any]:
    """One cold run: import, drop the dataset's pages, then read it through `spec["api"]`."""
    from child import _rss, _start_clock
    from libs import LIBRARIES

    wl, lib, path = workload_from_dict(spec["workload"]), LIBRARIES[spec["lib"]], Path(spec["path"])
    lib.preload(loader=True)
    off = spec.get("readahead") is False and "NEUROCODEC_READAHEAD_BYTES" not in os.environ
    if off:
        os.environ["NEUROCODEC_READAHEAD_BYTES"] = "0"
    files = [Path(p) for p in spec["files"]] if "files" in spec else sorted(p for p in path.rglob("*") if p.is_file())
    try:
        dropped = drop_cache(files, spec.get("quick", False))
        if spec["api"] == "raw":
            start = _start_clock()
            total = _raw_read(files)
            return {"seconds": time.perf_counter() - start, "bytes": total, "dropped": dropped}
        check = Checksum()
        with tempfile.TemporaryDirectory(prefix="cold-") as scratch:
            start = _start_clock()
            if spec["api"] == LOADER:
                for batch in lib.loader(path, wl, batch_size=BATCH, workers=WORKERS, seed=spec["seed"]):
                    check.add(*lib.batch(batch, wl))
            else:
                for arrays, trial in lib.api_samples(spec["api"], path, wl, seed=spec["seed"], scratch=Path(scratch)):
                    check.add(arrays, (trial,))
            seconds = time.perf_counter() - start
    finally:
        if off:
            del os.environ["NEUROCODEC_READAHEAD_BYTES"]
    return {"seconds": seconds, "samples": check.count, "checksum": check.value(), "dropped": dropped, **_rss()}


def _raw_read(files: list[Path]) -> int:
    view = memoryview(bytearray(RAW_BLOCK))
    total = 0
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return total

