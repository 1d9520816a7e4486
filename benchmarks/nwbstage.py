"""The NWB stage: conversion throughput per modality against h5py reading the same arrays raw.

For every modality of `nwbdata.MODALITIES` the installed plugins extract, each measurement in a
fresh process (child.py), best of `repeat`:

- the raw HDF5 read: h5py reading the modality's arrays whole, from the page cache;
- one session converted in one process, overlap 0 (the headline) and 0.5 (the default);
- `sessions` copies of the session converted in one process and with `workers=2` (overlap 0),
  the scaling being the second rate over the first.

Plus the earlier sessions' row: spikes + lfp + behavior together with default settings.
MB/s is the bytes of the source arrays (`nwbdata.ARRAYS`) over the conversion's time, each
source byte counted once whatever the overlap; benchmarks/README.md says exactly what is timed.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

from nwbdata import DESCRIPTION, MODALITIES
from report import NC, Report, Row

ALL = ("spikes", "lfp", "behavior")
WORKERS = 2
RAW = "raw HDF5 read (h5py, same arrays)"
STARTUP = "NWB workers: process start-up"
MANY = 0
"""In a run, stands for every session copy (`NWBStage.sessions`)."""
RUNS = [(1, 1, 0.0), (1, 1, 0.5), (MANY, 1, 0.0), (MANY, WORKERS, 0.0)]
"""What is measured per modality: (sessions, workers, overlap)."""


def convert_measure(sessions: int, workers: int, overlap: float) -> str:
    """The row's measure name for a conversion."""
    what = "1 session" if sessions == 1 else f"{sessions} sessions"
    how = "1 process" if workers == 1 else f"workers={workers}"
    return f"convert {what}, {how}, overlap {overlap:g}"


class NWBStage:
    """Runs the NWB measurements through `runner` (bench.Runner) and adds rows to `report`."""

    def __init__(self, runner: Any, report: Report, workdir: Path, *, quick: bool, repeat: int,
                 prewarm: Callable[[list[Path]], None], best: Callable[[list[dict[str, Any]]], Any],
                 seconds: float | None = None) -> None:
        self.runner, self.report, self.repeat, self.quick = runner, report, repeat, quick
        self.prewarm, self.best = prewarm, best
        self.seconds = seconds or (10.0 if quick else 300.0)
        self.sessions = 2 if quick else 4
        self.dir = workdir / "nwb"
        self.paths = [self.dir / f"session_{i}.nwb" for i in range(self.sessions)]

    def run(self) -> None:
        """Make the sessions, then measure every modality the plugins extract, then all together."""
        self.dir.mkdir(parents=True, exist_ok=True)
        made = self.runner.run([{"task": "nwb_make", "path": str(self.paths[0]), "seconds": self.seconds,
                                 "copies": [str(p) for p in self.paths[1:]]}])[0]
        found = self.runner.run([{"task": "nwb_modalities", "modalities": list(MODALITIES)}], sync=False)[0]
        if not made["ok"] or not found["ok"]:
            self.report.rows.append(Row("NWB: session", "convert", self.report.label(NC), None, "",
                                        note="failed (see log)"))
            return
        # --quick (the smoke test) starts worker processes for one modality only: each start costs seconds
        plans = [([m], RUNS if not self.quick or m == "lfp" else RUNS[:2]) for m in found["modalities"]]
        results = self.measure(plans + [(list(ALL), [(1, 1, 0.5)])])
        for modality in MODALITIES:
            if modality in found["modalities"]:
                runs = plans[found["modalities"].index(modality)][1]
                self.modality(modality, made["bytes"][modality], runs, *results.pop(0))
            else:
                self.report.rows.append(Row(self.section(modality), "convert", self.report.label(NC), None, "",
                                            note=f"skipped: no installed plugin extracts {modality!r} from NWB"))
        raw, (convert,) = results.pop(0)
        section = f"NWB all: {self.seconds:.0f} s session, spikes + lfp + behavior together"
        self.add_convert(section, convert_measure(1, 1, 0.5), convert, sum(made["bytes"][m] for m in ALL),
                         self.add_raw(section, raw))
        self.add_startup()

    def add_startup(self) -> None:
        """What starting the converter's worker processes costs on its own (best of `repeat`)."""
        results = self.runner.run([{"task": "spawn_pool", "workers": WORKERS}] * self.repeat, sync=False)
        result = self.best(results)
        measure = f"start {WORKERS} spawned workers"
        if result is None:
            self.report.rows.append(Row(STARTUP, measure, self.report.label(NC), None, "", note="failed (see log)"))
            return
        self.report.rows.append(Row(STARTUP, measure, self.report.label(NC), result["seconds"], "s",
                                    note=f"{result['processes']} processes, each importing pynwb and neurocodec and "
                                         "loading the plugins, then stopped; inside every workers= time above"))

    def section(self, modality: str) -> str:
        """The table section of one modality."""
        return f"NWB {modality}: {self.seconds:.0f} s session, {DESCRIPTION[modality]}"

    def modality(self, modality: str, data_bytes: int, runs: list[tuple[int, int, float]], raw: Any,
                 converts: list[Any]) -> None:
        """The rows of one modality: raw read, then each run, the last with its scaling."""
        section = self.section(modality)
        raw_mbps = self.add_raw(section, raw)
        rates = {}
        for (sessions, workers, overlap), result in zip(runs, converts):
            count = self.sessions if sessions == MANY else sessions
            rates[(sessions, workers)] = self.add_convert(section, convert_measure(count, workers, overlap),
                                                          result, count * data_bytes, raw_mbps)
        single, parallel = rates.get((MANY, 1)), rates.get((MANY, WORKERS))
        if single and parallel:
            self.report.rows[-1].note += f"; scaling {parallel / single:.2f}x over 1 process (same sessions)"

    def measure(self, plans: list[tuple[list[str], list[tuple[int, int, float]]]]) -> list[tuple[Any, list[Any]]]:
        """For each plan (modalities, runs of (sessions, workers, overlap); sessions MANY stands for
        all of them), the best raw read and the best conversion of each run. One repetition runs
        every measurement once (each in a process of its own, or with --quick in one call)."""
        reads: list[list[dict[str, Any]]] = [[] for _ in plans]
        converts: list[list[list[dict[str, Any]]]] = [[[] for _ in runs] for _, runs in plans]
        out = self.dir / "shards"
        for _ in range(self.repeat):
            shutil.rmtree(out, ignore_errors=True)
            self.prewarm(self.paths)
            specs, where = [], []
            for p, (modalities, runs) in enumerate(plans):
                specs.append({"task": "hdf5_read", "path": str(self.paths[0]), "modalities": modalities})
                where.append(reads[p])
                for r, (sessions, workers, overlap) in enumerate(runs):
                    paths = self.paths if sessions == MANY else self.paths[:sessions]
                    specs.append({"task": "nwb_convert", "paths": [str(x) for x in paths],
                                  "out": str(out / f"{p}-{r}"), "modalities": modalities, "overlap": overlap,
                                  "workers": workers, "shard_size": 1000})
                    where.append(converts[p][r])
            for into, result in zip(where, self.runner.run(specs)):
                into.append(result)
        shutil.rmtree(out, ignore_errors=True)
        return [(self.best(r), [self.best(c) for c in runs]) for r, runs in zip(reads, converts)]

    def add_raw(self, section: str, read: dict[str, Any] | None) -> float | None:
        """The raw read's row; its MB/s (None when it failed)."""
        if read is None:
            self.report.rows.append(Row(section, RAW, "h5py", None, "", note="failed (see log)"))
            return None
        mbps = read["bytes"] / read["seconds"] / 1e6
        self.report.rows.append(Row(section, RAW, "h5py", None, "", mbps, pct_raw=100.0,
                                    note=f"{read['bytes'] / 1e6:.1f} MB of arrays read whole"))
        return mbps

    def add_convert(self, section: str, measure: str, result: dict[str, Any] | None, data_bytes: int,
                    raw_mbps: float | None) -> float | None:
        """A conversion's row (samples/s, MB/s of source arrays, % of the raw read); its MB/s."""
        if result is None:
            self.report.rows.append(Row(section, measure, self.report.label(NC), None, "", note="failed (see log)"))
            return None
        mbps = data_bytes / result["seconds"] / 1e6
        self.report.rows.append(Row(
            section, measure, self.report.label(NC), result["samples"] / result["seconds"], "samples/s", mbps,
            pct_raw=None if not raw_mbps else 100 * mbps / raw_mbps, rss=self.report._rss(result),
            note=f"{result['samples']} samples in {result['seconds']:.2f} s; "
                 f"shards written at {result['bytes'] / result['seconds'] / 1e6:.0f} MB/s"))
        return mbps
