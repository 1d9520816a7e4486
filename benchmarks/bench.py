"""neurocodec against webdataset, MosaicML streaming and litdata on the workloads of issue 5.

    python benchmarks/bench.py                  # everything, best of 3 (several minutes)
    python benchmarks/bench.py --quick          # tiny sizes, one repetition, forked processes (the smoke test)
    python benchmarks/bench.py --only seed,loader --json results.json

Each library writes the same synthetic data with its own writer and reads it back with its own
reader; every measurement runs in a fresh Python process (see child.py), dataset files are read
once beforehand so reads come from the page cache, and each number is the best of `--repeat`
runs. Libraries that cannot be imported are reported with their import error and skipped.
With --quick, several tasks share a process, forked from one that has imported the libraries
(forked.py).
benchmarks/README.md explains every number.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from forked import ForkServer  # noqa: E402  (after the sys.path line above)
from report import NC, NOVERIFY, Report, goals  # noqa: E402
from workloads import Workload, expected_checksum, generate_source, workload_to_dict, workloads  # noqa: E402

STAGES = ("seed", "lfp", "loader", "resume", "guide", "nwb", "remote", "cold", "memory")
PEERS = ("webdataset", "mosaicml-streaming", "litdata")
BATCH, WORKERS, SEED = 32, 2, 0


class Runner:
    """Runs tasks in child processes: one fresh process per task, or (quick) one forked process
    per call (forked.py)."""

    def __init__(self, workdir: Path, shared: bool, verbose: bool) -> None:
        self.workdir, self.shared, self.verbose = workdir, shared, verbose
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self.forks = ForkServer(self.logs / "forkserver.log") if shared else None

    def close(self) -> None:
        """Stop the fork server (quick runs)."""
        if self.forks is not None:
            self.forks.close()

    def run(self, specs: list[dict[str, Any]], *, sync: bool = True) -> list[dict[str, Any]]:
        """Results of `specs`, in order (each result has ok, and error when not ok)."""
        if not specs:
            return []
        if self.shared:
            results = self._child(specs, sync)
            return [{**r, "shared_process": len(specs) > 1} for r in results]
        return [self._child([spec], sync)[0] for spec in specs]

    def _child(self, specs: list[dict[str, Any]], sync: bool) -> list[dict[str, Any]]:
        self.count += 1
        stem = self.logs / f"{self.count:04d}-{specs[0]['task']}"
        spec_path, result_path, log_path = (stem.with_suffix(s) for s in (".spec.json", ".result.json", ".log"))
        spec_path.write_text(json.dumps(specs))
        if sync:
            os.sync()  # earlier writes must not be flushed while this one is measured
        if self.verbose:
            print(f"  [{self.count}] {', '.join(_describe(s) for s in specs)}", file=sys.stderr, flush=True)
        if self.forks is not None:
            returncode = self.forks.run(HERE / "child.py", [str(spec_path), str(result_path)], stdout=log_path,
                                        cwd=self.workdir)
        else:
            with open(log_path, "w") as log:
                returncode = subprocess.run([sys.executable, str(HERE / "child.py"), str(spec_path), str(result_path)],
                                            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, timeout=1800,
                                            check=False).returncode
        if returncode != 0 or not result_path.exists():
            tail = log_path.read_text()[-2000:]
            return [{"ok": False, "error": f"child exited with {returncode}: {tail}"} for _ in specs]
        results = json.loads(result_path.read_text())
        for spec, result in zip(specs, results):
            if not result["ok"]:
                print(f"  ! {_describe(spec)} failed: {result['error']} (log: {log_path})", file=sys.stderr)
        return results


def _describe(spec: dict[str, Any]) -> str:
    parts = [spec["task"], spec.get("lib", ""), spec.get("workload", {}).get("name", "")]
    return " ".join(p for p in parts if p)


def prewarm(paths: list[Path]) -> None:
    """Read every file under `paths` once so later reads come from the page cache."""
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            with open(path, "rb", buffering=0) as f:
                while f.read(1 << 22):
                    pass


def best(results: list[dict[str, Any]], key: str = "seconds") -> dict[str, Any] | None:
    """The successful result with the smallest `key` (None when all failed)."""
    ok = [r for r in results if r.get("ok") and r.get(key) is not None]
    return min(ok, key=lambda r: r[key]) if ok else None


class Bench:
    """Builds the datasets and runs the stages; fills a Report."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        self.wls = workloads(args.quick)
        self.runner = Runner(workdir, shared=args.quick, verbose=not args.quiet)
        self.repeat = args.repeat
        self.report = Report(repeat=self.repeat, quick=args.quick)
        self.libs: list[str] = []
        self.datasets: dict[tuple[str, str], Path] = {}

    # -- set-up ------------------------------------------------------------------------------
    def probe(self) -> None:
        """Find which peers import; neurocodec must."""
        wanted = ["neurocodec"] + [p for p in PEERS if not self.args.libs or p in self.args.libs]
        found = self.runner.run([{"task": "probe", "libs": wanted}], sync=False)[0]
        if not found.get("ok"):
            raise SystemExit(f"probe failed: {found.get('error')}")
        for name in wanted:
            info = found[name]
            self.report.peers[name] = info
            if "version" in info:
                self.libs.append(name)
        if "neurocodec" not in self.libs:
            raise SystemExit(f"neurocodec does not import: {found['neurocodec'].get('error')}")

    def source(self, wl: Workload) -> Path:
        """The workload's generated source arrays."""
        directory = self.workdir / "source" / wl.name
        generate_source(wl, directory)
        return directory

    def dataset_dir(self, wl: Workload, lib: str, variant: str = "") -> Path:
        """Where `lib` stores workload `wl`."""
        return self.workdir / "data" / wl.name / (lib + variant)

    def write_spec(self, wl: Workload, lib: str, options: dict[str, Any] | None = None,
                   variant: str = "") -> dict[str, Any]:
        """A write task (its output directory is cleared first)."""
        out = self.dataset_dir(wl, lib, variant)
        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        return {"task": "write", "lib": lib, "workload": workload_to_dict(wl), "source": str(self.source(wl)),
                "out": str(out), "options": options or {}}

    def ensure_datasets(self, wl: Workload, libs: list[str]) -> None:
        """Build (untimed) the datasets of `libs` that no earlier stage wrote."""
        todo = [lib for lib in libs if (wl.name, lib) not in self.datasets]
        specs = [self.write_spec(wl, lib, {"fsync": False} if lib == "neurocodec" else None) for lib in todo]
        for lib, result in zip(todo, self.runner.run(specs)):
            if result["ok"]:
                self.datasets[(wl.name, lib)] = self.dataset_dir(wl, lib)

    # -- (a) and (b): write, read in one process, raw read ----------------------------------
    def stage_read_write(self, wl: Workload) -> None:
        """Write with every library (best of N), then read back in one process (best of N)."""
        variants = [("neurocodec", {}, "")] + [("neurocodec", {"fsync": False}, "-nofsync")]
        variants += [(lib, {}, "") for lib in self.libs if lib != "neurocodec"]
        writes: dict[str, list] = {lib + v: [] for lib, _, v in variants}
        for _ in range(self.repeat):
            specs = [self.write_spec(wl, lib, options, v) for lib, options, v in variants]
            for (lib, _, v), result in zip(variants, self.runner.run(specs)):
                writes[lib + v].append(result)
        shutil.rmtree(self.dataset_dir(wl, "neurocodec", "-nofsync"), ignore_errors=True)
        for lib, _, v in variants:
            self.report.add_write(wl, lib + v, best(writes[lib + v]))
            if not v and best(writes[lib]):
                self.datasets[(wl.name, lib)] = self.dataset_dir(wl, lib)
        readers = [lib for lib in self.libs if (wl.name, lib) in self.datasets]
        # neurocodec once more without payload CRCs (verify="none", for trusted data): what the
        # per-member CRC-32 of the default costs in this measurement. (row name, library, options)
        variants = [(lib, lib, {}) for lib in readers]
        if NC in readers:
            variants.insert(1, (NOVERIFY, NC, {"verify": "none"}))
        names = [name for name, _, _ in variants]
        shard_files = sorted(str(p) for p in self.dataset_dir(wl, "neurocodec").glob("shard_*.tar"))
        reads: dict[str, list] = {name: [] for name in names + ["floor", "raw"]}
        for _ in range(self.repeat):
            prewarm([self.datasets[(wl.name, lib)] for lib in readers])
            specs = [{"task": "read", "lib": lib, "options": options, "workload": workload_to_dict(wl),
                      "path": str(self.datasets[(wl.name, lib)])} for _, lib, options in variants]
            specs.append({"task": "floor", "files": shard_files, "workload": workload_to_dict(wl)})
            specs.append({"task": "raw", "files": shard_files})
            for name, result in zip(names + ["floor", "raw"], self.runner.run(specs, sync=False)):
                reads[name].append(result)
        expected = expected_checksum(wl, self.source(wl))
        for name in names:
            self.report.add_read(wl, name, best(reads[name]), expected)
        self.report.add_floor(wl, best(reads["floor"]), expected)
        self.report.add_raw(wl, best(reads["raw"]))

    # -- (c): through the DataLoader ----------------------------------------------------------
    def stage_loader(self, wl: Workload) -> None:
        """One shuffled epoch per library (batch 32, 2 workers), then resume at 90%."""
        self.ensure_datasets(wl, self.libs)
        libs = [lib for lib in self.libs if (wl.name, lib) in self.datasets]
        position = (int(0.9 * wl.samples) // BATCH) * BATCH
        states = {lib: self.workdir / "state" / f"{wl.name}-{lib}.json" for lib in libs}
        states["neurocodec"].parent.mkdir(exist_ok=True)
        base = {"workload": workload_to_dict(wl), "batch_size": BATCH, "workers": WORKERS, "seed": SEED}
        epochs: dict[str, list] = {lib: [] for lib in libs}
        resumed: dict[str, list] = {lib: [] for lib in libs}
        resumable = [lib for lib in libs if _resumable(lib)]
        for _ in range(self.repeat):
            prewarm([self.datasets[(wl.name, lib)] for lib in libs])
            specs = [{**base, "task": "epoch", "lib": lib, "path": str(self.datasets[(wl.name, lib)]),
                      **({"capture_at": position, "state_out": str(states[lib])} if lib in resumable else {})}
                     for lib in libs]
            for lib, result in zip(libs, self.runner.run(specs, sync=False)):
                epochs[lib].append(result)
        for _ in range(self.repeat):
            specs = [{**base, "task": "epoch", "lib": lib, "path": str(self.datasets[(wl.name, lib)]),
                      "resume_state": str(states[lib])} for lib in resumable if states[lib].exists()]
            for spec, result in zip(specs, self.runner.run(specs, sync=False)):
                resumed[spec["lib"]].append(result)
        expected = expected_checksum(wl, self.source(wl))
        for lib in libs:
            self.report.add_epoch(wl, lib, epochs[lib], resumed[lib] if lib in resumable else None,
                                  expected, wl.samples - position)

    # -- (d): resume at 90% of a 100k-sample dataset -------------------------------------------
    def stage_resume(self, wl: Workload) -> None:
        """First batch of a fresh loader and of one restored at 90% (batch 32, 2 workers)."""
        libs = [lib for lib in self.libs if _resumable(lib)]
        self.ensure_datasets(wl, libs)
        libs = [lib for lib in libs if (wl.name, lib) in self.datasets]
        position = (int(0.9 * wl.samples) // BATCH) * BATCH
        base = {"workload": workload_to_dict(wl), "batch_size": BATCH, "workers": WORKERS, "seed": SEED}
        states = {lib: self.workdir / "state" / f"{wl.name}-{lib}.json" for lib in libs}
        (self.workdir / "state").mkdir(exist_ok=True)
        prewarm([self.datasets[(wl.name, lib)] for lib in libs])
        # Libraries without a documented way to build a state at a position iterate there once.
        prep = [{**base, "task": "epoch", "lib": lib, "path": str(self.datasets[(wl.name, lib)]),
                 "capture_at": position, "stop_after": position, "state_out": str(states[lib])}
                for lib in libs if lib != "neurocodec"]
        self.runner.run(prep, sync=False)
        fresh: dict[str, list] = {lib: [] for lib in libs}
        resumed: dict[str, list] = {lib: [] for lib in libs}
        for _ in range(self.repeat):
            specs = []
            for lib in libs:
                spec = {**base, "task": "first_batch", "lib": lib, "path": str(self.datasets[(wl.name, lib)])}
                specs.append(spec)
                if lib == "neurocodec":
                    specs.append({**spec, "resume_position": position})
                elif states[lib].exists():
                    specs.append({**spec, "resume_state": str(states[lib])})
            for spec, result in zip(specs, self.runner.run(specs, sync=False)):
                is_resumed = "resume_position" in spec or "resume_state" in spec
                (resumed if is_resumed else fresh)[spec["lib"]].append(result)
        for lib in libs:
            self.report.add_resume(wl, lib, fresh[lib], resumed[lib], position)

    # -- (e): NWB conversion -----------------------------------------------------------------
    def stage_nwb(self) -> None:
        """Convert generated NWB sessions per modality, in one process and in two; read the same
        arrays raw with h5py (nwbstage.py)."""
        from nwbstage import NWBStage

        NWBStage(self.runner, self.report, self.workdir, quick=self.args.quick, repeat=self.repeat,
                 prewarm=prewarm, best=best, seconds=self.args.nwb_seconds).run()

    # -- issue 6: reading from an S3-protocol server on loopback next to local disk ---------------
    def stage_remote(self) -> None:
        """neurocodec reading local disk vs moto's S3 server (empty cache before issue 18 and
        now, filled cache; per reader; 4 large shards; moto's raw GET rate)."""
        from remote import bench_remote_read

        try:
            quick = self.args.quick
            result = bench_remote_read(samples=200 if quick else 2000, sample_shape=(8, 50) if quick else (32, 250),
                                       shard_size=50 if quick else 200, repeat=self.repeat,
                                       workdir=self.workdir / "remote", quick=quick)
        except Exception as exc:  # moto or s3fs missing: report, as for a peer that is not installed
            result = {"error": f"{type(exc).__name__}: {exc}"}
        self.report.add_remote(result)

    # -- (f): memory baselines ---------------------------------------------------------------
    def stage_memory(self) -> None:
        """Peak RSS of a process that only imports each library (and torch)."""
        results = self.runner.run([{"task": "baseline", "lib": lib} for lib in self.libs], sync=False)
        for lib, result in zip(self.libs, results):
            self.report.add_baseline(lib, result)

    def run(self) -> Report:
        """Run the selected stages."""
        try:
            self.probe()
            only = self.args.only or list(STAGES)
            started = time.perf_counter()
            self.report.load.append(os.getloadavg()[0])
            for stage in STAGES:
                if stage in only:
                    print(f"== {stage}", file=sys.stderr, flush=True)
                    self.run_stage(stage)
            self.report.elapsed = time.perf_counter() - started
            self.report.load.append(os.getloadavg()[0])
        finally:
            self.runner.close()
        return self.report

    def run_stage(self, stage: str) -> None:
        """Run one stage."""
        if stage in ("seed", "lfp"):
            self.stage_read_write(self.wls[stage])
        elif stage == "loader":
            self.stage_loader(self.wls["seed"])
        elif stage == "resume":
            self.stage_resume(self.wls["tiny"])
        elif stage == "guide":
            from guide_stage import GuideStage

            GuideStage(self).run()
        elif stage == "nwb":
            self.stage_nwb()
        elif stage == "remote":
            self.stage_remote()
        elif stage == "cold":
            from cold_stage import ColdStage

            ColdStage(self).run()
        else:
            self.stage_memory()


def _resumable(lib: str) -> bool:
    from libs import LIBRARIES

    return LIBRARIES[lib].resumable


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, one repetition, several tasks per process (smoke test)")
    parser.add_argument("--only", type=lambda s: [x for x in s.split(",") if x], default=None,
                        help=f"comma-separated stages among {','.join(STAGES)}")
    parser.add_argument("--json", type=Path, default=None, help="also write all results as JSON here")
    parser.add_argument("--repeat", type=int, default=None, help="runs per measurement, best kept "
                        "(default 3; 1 with --quick)")
    parser.add_argument("--libs", type=lambda s: [x for x in s.split(",") if x], default=None,
                        help=f"peers to include among {','.join(PEERS)} (default: every installed one)")
    parser.add_argument("--workdir", type=Path, default=None, help="where datasets are built (default: a temp dir)")
    parser.add_argument("--nwb-seconds", type=float, default=None,
                        help="length of the NWB stage's sessions in seconds (default 300; 10 with --quick)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only or []) - set(STAGES)) + sorted(set(args.libs or []) - set(PEERS))
    if unknown:
        parser.error(f"unknown stage or library: {', '.join(unknown)}")
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.nwb_seconds is not None and not args.nwb_seconds >= 10:
        parser.error("--nwb-seconds must be at least 10")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="neurocodec-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        report = Bench(args, workdir.resolve()).run()
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    command = "python benchmarks/bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(report.render(command.strip()))
    print(goals(report))
    if args.json:
        args.json.write_text(json.dumps(report.to_json(command.strip()), indent=1))
    return 1 if report.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
