"""Turning measurements into the printed table, the goals of issue 5, and JSON.

Ratios are always "how many times better neurocodec is": neurocodec's rate over the peer's for
samples/s, the peer's time over neurocodec's for seconds. Above 1 means neurocodec wins.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

from workloads import Workload

NC = "neurocodec"
FLOOR = "zero-cost reader (floor)"
HEADER = "| workload | measure | library | value | MB/s | % of raw | neurocodec ÷ peer | peak RSS MB | note |"
NOFSYNC = "neurocodec-nofsync"
NOVERIFY = "neurocodec-noverify"
VARIANTS = {NOFSYNC: "fsync=False", NOVERIFY: "verify=none"}
"""neurocodec measured again with one setting changed: the name used in the driver, the label suffix."""


@dataclass
class Row:
    """One line of the table."""

    section: str
    measure: str
    library: str
    value: float | None
    unit: str                       # "samples/s" (higher is better) or "s" (lower is better)
    mbps: float | None = None
    pct_raw: float | None = None
    rss: str = ""
    note: str = ""
    ratio: str = ""
    fixed: bool = False
    """The ratio was set by the stage that made the row (`guide_stage`), not by `Report._ratios`."""


@dataclass
class Report:
    """Every row measured in one run, plus the peers found and the checksum verdicts."""

    repeat: int
    quick: bool
    peers: dict[str, dict[str, str]] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    checks: int = 0
    elapsed: float = 0.0
    load: list[float] = field(default_factory=list)
    guide_goals: dict[str, float | None] = field(default_factory=dict)
    """Issue 18's goals (`guide_stage.guide_goal_values`), when that stage ran."""

    def label(self, lib: str) -> str:
        """Library name with its version (`neurocodec-nofsync` and `neurocodec-noverify` become
        the setting they change)."""
        if lib in VARIANTS:
            return f"{self.label(NC)} {VARIANTS[lib]}"
        version = self.peers.get(lib, {}).get("version")
        return f"{lib} {version}" if version else lib

    def _rss(self, result: dict[str, Any], workers: bool = False) -> str:
        if result.get("shared_process") or "rss_kb" not in result:
            return ""
        text = f"{result['rss_kb'] / 1024:.0f}"
        if workers and result.get("workers_rss_kb"):
            text += f" (workers {result['workers_rss_kb'] / 1024:.0f})"
        return text

    def _check(self, what: str, got: str | None, expected: str) -> str:
        self.checks += 1
        if got == expected:
            return "checksum ok"
        self.mismatches.append(f"{what}: checksum {got} != expected {expected}")
        return "CHECKSUM MISMATCH"

    def _failed(self, section: str, measure: str, lib: str) -> None:
        self.rows.append(Row(section, measure, self.label(lib), None, "", note="failed (see log)"))

    # -- adding measurements -------------------------------------------------------------------
    def add_write(self, wl: Workload, lib: str, result: dict[str, Any] | None) -> None:
        """A write of the whole workload."""
        section = f"{wl.name}: {wl.samples} samples"
        if result is None:
            return self._failed(section, "write", lib)
        rate = result["samples"] / result["seconds"]
        note = f"{result['disk_bytes'] / result['samples'] / 1e3:.1f} KB/sample on disk"
        self.rows.append(Row(section, "write", self.label(lib), rate, "samples/s", rate * wl.array_bytes / 1e6,
                             note=note))

    def add_read(self, wl: Workload, lib: str, result: dict[str, Any] | None, expected: str) -> None:
        """A one-process read of every sample."""
        section = f"{wl.name}: {wl.samples} samples"
        if result is None:
            return self._failed(section, "read, 1 process", lib)
        rate = result["samples"] / result["seconds"]
        note = self._check(f"{wl.name} read {lib}", result.get("checksum"), expected)
        self.rows.append(Row(section, "read, 1 process", self.label(lib), rate, "samples/s",
                             rate * wl.array_bytes / 1e6, rss=self._rss(result), note=note))

    def add_floor(self, wl: Workload, result: dict[str, Any] | None, expected: str) -> None:
        """The checksum alone over views of neurocodec's shards: what a reader that cost nothing
        would show, the ceiling of every read row above it on this machine."""
        section = f"{wl.name}: {wl.samples} samples"
        if result is None:
            return self._failed(section, "read, 1 process", FLOOR)
        rate = result["samples"] / result["seconds"]
        note = self._check(f"{wl.name} floor", result.get("checksum"), expected)
        self.rows.append(Row(section, "read, 1 process", FLOOR, rate, "samples/s", rate * wl.array_bytes / 1e6,
                             note=f"{note}; only the page faults, first touch and checksum are timed"))

    def add_raw(self, wl: Workload, result: dict[str, Any] | None) -> None:
        """Plain reads of neurocodec's shard files: the ceiling for one-process reads."""
        section = f"{wl.name}: {wl.samples} samples"
        if result is None:
            return self._failed(section, "read, 1 process", "raw file read")
        rate = wl.samples / result["seconds"]
        self.rows.append(Row(section, "read, 1 process", "raw file read", rate, "samples/s",
                             result["bytes"] / result["seconds"] / 1e6, pct_raw=100.0,
                             note="plain reads of neurocodec's shard files (MB/s of file bytes)"))
        for row in self.rows:
            if row.section == section and row.measure == "read, 1 process" and row.value and row is not self.rows[-1]:
                row.pct_raw = 100.0 * row.value / rate

    def add_epoch(self, wl: Workload, lib: str, epochs: list[dict[str, Any]],
                  resumed: list[dict[str, Any]] | None, expected: str, remaining: int) -> None:
        """One shuffled epoch through the DataLoader, and the first batch after resuming."""
        section = f"{wl.name} through the DataLoader (batch 32, 2 workers, shuffle)"
        ok = [r for r in epochs if r.get("ok") and r.get("first_batch_s") is not None]
        if not ok:
            return self._failed(section, "epoch", lib)
        label = self.label(lib)
        after = max(ok, key=lambda r: (r["samples"] - r["first_batch_samples"]) / (r["seconds"] - r["first_batch_s"]))
        rate_after = (after["samples"] - after["first_batch_samples"]) / (after["seconds"] - after["first_batch_s"])
        incl = max(ok, key=lambda r: r["samples"] / r["seconds"])
        fresh = min(ok, key=lambda r: r["first_batch_s"])
        note = self._check(f"loader epoch {lib}", after.get("checksum"), expected)
        self.rows += [
            Row(section, "epoch, after the first batch", label, rate_after, "samples/s",
                rate_after * wl.array_bytes / 1e6, rss=self._rss(after, workers=True), note=note),
            Row(section, "epoch, including the first batch", label, incl["samples"] / incl["seconds"], "samples/s",
                incl["samples"] / incl["seconds"] * wl.array_bytes / 1e6),
            Row(section, "first batch, fresh", label, fresh["first_batch_s"], "s"),
        ]
        if resumed is None:
            self.rows.append(Row(section, "first batch, resumed at 90%", label, None, "s", note="n/a: no resume"))
            return
        good = [r for r in resumed if r.get("ok") and r.get("first_batch_s") is not None]
        if not good:
            return self._failed(section, "first batch, resumed at 90%", lib)
        first = min(good, key=lambda r: r["first_batch_s"])
        counts = sorted({r["samples"] for r in good})
        note = f"{counts[0]} samples after resume" + ("" if counts == [remaining] else f", expected {remaining}: WRONG")
        if counts != [remaining]:
            self.mismatches.append(f"loader resume {lib}: {counts} samples after resume, expected {remaining}")
        self.rows.append(Row(section, "first batch, resumed at 90%", label, first["first_batch_s"], "s", note=note))

    def add_resume(self, wl: Workload, lib: str, fresh: list[dict[str, Any]], resumed: list[dict[str, Any]],
                   position: int) -> None:
        """First batch fresh vs restored at `position` of a large dataset of small samples."""
        section = f"resume: {wl.samples} samples of {wl.array_bytes} B (batch 32, 2 workers, shuffle)"
        label = self.label(lib)
        f = [r["first_batch_s"] for r in fresh if r.get("ok") and r.get("first_batch_s") is not None]
        r = [x["first_batch_s"] for x in resumed if x.get("ok") and x.get("first_batch_s") is not None]
        if not f or not r:
            return self._failed(section, "first batch", lib)
        self.rows += [
            Row(section, "first batch, fresh", label, min(f), "s"),
            Row(section, f"first batch, resumed at {position}", label, min(r), "s",
                note=f"resumed ÷ fresh = {min(r) / min(f):.2f}"),
        ]

    def add_remote(self, result: dict[str, Any]) -> None:
        """neurocodec reading the same dataset from local disk and from S3 on loopback: with
        the cache empty (settings before issue 18, and now) and filled, per reader; moto's raw
        GET rate beside them (see benchmarks/remote.py)."""
        if "error" in result:
            self.rows.append(Row("remote: S3 on loopback", "read, 1 process", self.label(NC), None, "",
                                 note=f"skipped: {result['error']}"))
            return
        server = result["server"]
        self._remote_rows(f"remote: {result['samples']} samples of {result['bytes'] / result['samples'] / 1e3:.0f} "
                          f"KB, {result['shards']} shards, {server}", result)
        big = result.get("big")
        if big:
            self._remote_rows(f"remote: {big['shards']} shards of {big['bytes'] / big['shards'] / 1e6:.3g} MB "
                              f"({big['part_bytes'] >> 10} KiB parts), {server}", big)
        slow = result.get("latency")
        if slow:
            self._remote_rows(f"remote: {slow['samples']} samples, {slow['shards']} shards, {server}, each GET "
                              f"answered after {1000 * slow['latency_s']:.0f} ms at {slow['stream_mb_per_s']:.0f} MB/s "
                              "per connection", slow)

    def _remote_rows(self, section: str, result: dict[str, Any]) -> None:
        mb = result["bytes"] / result["samples"] / 1e6
        rates = result["samples_per_s"]
        label = self.label(NC)
        for reader in dict.fromkeys(key.split("|")[0] for key in rates):
            ratio = result["ratios"][reader]
            for state, measure, note in (
                    ("local", "read from local disk", ""),
                    ("empty, before", "read from S3, empty cache, 1 download thread, whole shards",
                     f"downloads included; {100 * ratio['empty before / filled']:.0f}% of the filled cache"),
                    ("empty", "read from S3, empty cache, parallel ranged downloads",
                     f"downloads included; {100 * ratio['empty / filled']:.0f}% of the filled cache (goal >= 50%)"),
                    ("filled", "read from S3, cache filled", "")):
                rate = rates[f"{reader}|{state}"]
                self.checks += 1  # remote.py compared every read with the data written, raising if different
                note = "; ".join(filter(None, ("checksum ok", note)))
                self.rows.append(Row(section, f"{reader}: {measure}", label, rate, "samples/s", rate * mb, note=note))
        for how, mbps in result["raw_get_mb_per_s"].items():
            self.rows.append(Row(section, f"moto's raw GET rate, {how}", "s3fs alone", mbps / mb, "samples/s", mbps,
                                 note="no neurocodec: the ceiling of an empty cache on this server"))

    def add_baseline(self, lib: str, result: dict[str, Any]) -> None:
        """Peak RSS of a process that imported the library and torch, nothing else."""
        section = "memory: peak RSS of a process that only imports the library and torch"
        if not result.get("ok"):
            return self._failed(section, "imports only", lib)
        self.rows.append(Row(section, "imports only", self.label(lib), None, "", rss=self._rss(result)))

    # -- output ------------------------------------------------------------------------------
    def _ratios(self) -> None:
        """Fill each peer's ratio against neurocodec's row of the same section and measure."""
        for row in self.rows:
            if row.fixed:
                continue
            row.ratio = ""
            if row.value is None or row.library.startswith(NC) or row.library in ("raw file read", "h5py", FLOOR):
                continue
            ref = [r for r in self.rows if r.section == row.section and r.measure == row.measure
                   and r.library.startswith(NC) and r.value]
            if not ref:
                continue
            # The default settings' ratio first, then each variant's in brackets; a variant's is
            # always named, even where the default row is missing.
            ref.sort(key=lambda r: _variant(r.library) is not None)
            texts = [" ".join(filter(None, (_ratio(r.value, row.value, row.unit), _variant(r.library))))
                     for r in ref]
            row.ratio = texts[0] + "".join(f" ({text})" for text in texts[1:])

    def render(self, command: str) -> str:
        """The markdown table with a header naming the machine, the command and the peers."""
        self._ratios()
        lines = [
            f"neurocodec benchmark — `{command}`",
            f"machine: {_cpu()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
            f"best of {self.repeat} run(s) each" + ("; QUICK sizes, several tasks per process" if self.quick else ""),
        ]
        for name, info in self.peers.items():
            state = info["version"] if "version" in info else f"SKIPPED ({info['error']})"
            lines.append(f"- {name}: {state}")
        lines += ["", HEADER, "|---|---|---|---|---|---|---|---|---|"]
        for row in self.rows:
            lines.append("| " + " | ".join([
                row.section, row.measure, row.library, _value(row), _num(row.mbps), _pct(row.pct_raw),
                row.ratio, row.rss, row.note]) + " |")
        if self.load:
            lines.insert(2, "load average (1 min) at start / end: " + " / ".join(f"{x:.1f}" for x in self.load)
                         + " (other processes on the machine slow every library alike)")
        verdict = (f"checksums: all {self.checks} readers returned the source data" if not self.mismatches
                   else "MISMATCHES:\n  " + "\n  ".join(self.mismatches))
        lines += ["", verdict, f"(ran {self.elapsed:.0f} s)"]
        return "\n".join(lines)

    def to_json(self, command: str) -> dict[str, Any]:
        """Everything, for --json."""
        self._ratios()
        return {"command": command, "machine": {"cpu": _cpu(), "cores": os.cpu_count(),
                                                "python": platform.python_version()},
                "repeat": self.repeat, "quick": self.quick, "peers": self.peers, "load": self.load,
                "rows": [asdict(r) for r in self.rows], "mismatches": self.mismatches,
                "goals": goal_values(self), "nwb_goals": nwb_goal_values(self), "guide_goals": self.guide_goals}

    def find(self, section_start: str, measure_start: str, lib: str) -> float | None:
        """The value of the first matching row (library by name prefix)."""
        for row in self.rows:
            if (row.section.startswith(section_start) and row.measure.startswith(measure_start)
                    and row.library.split(" ")[0] == lib and _variant(row.library) is None):
                return row.value
        return None


def goal_values(report: Report) -> dict[str, float | None]:
    """The ratios issue 5 sets goals for (None where a side is missing)."""
    f = report.find

    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    nofsync = next((r.value for r in report.rows if r.section.startswith("seed") and r.measure == "write"
                    and "fsync=False" in r.library), None)
    raw = next((r.value for r in report.rows if r.section.startswith("lfp") and r.library == "raw file read"), None)
    resume_rows = [r for r in report.rows if r.section.startswith("resume") and r.library.startswith(NC)]
    return {
        "seed read: neurocodec / litdata (goal >= 2)": div(f("seed", "read", NC), f("seed", "read", "litdata")),
        "lfp read: % of raw (goal >= 70)": _percent(div(f("lfp", "read", NC), raw)),
        "lfp read: neurocodec / litdata (goal ~1.5)": div(f("lfp", "read", NC), f("lfp", "read", "litdata")),
        "DataLoader epoch: neurocodec / litdata (goal >= 3)":
            div(f("seed through", "epoch, after", NC), f("seed through", "epoch, after", "litdata")),
        "first batch fresh: neurocodec / litdata time (goal <= 0.33)":
            div(f("seed through", "first batch, fresh", NC), f("seed through", "first batch, fresh", "litdata")),
        "first batch resumed: neurocodec / litdata time (goal <= 0.33)":
            div(f("seed through", "first batch, resumed", NC), f("seed through", "first batch, resumed", "litdata")),
        "write: neurocodec / webdataset (goal >= 3)": div(f("seed", "write", NC), f("seed", "write", "webdataset")),
        "write fsync=False: neurocodec / webdataset (goal >= 3)": div(nofsync, f("seed", "write", "webdataset")),
        "resume 100k: resumed / fresh first batch (goal <= 1.2)":
            div(resume_rows[1].value, resume_rows[0].value) if len(resume_rows) == 2 else None,
    }


def nwb_goal_values(report: Report) -> dict[str, float | None]:
    """Issue 13's conversion goals, per continuous modality: one session in one process at
    overlap 0 as % of h5py's raw read of the same arrays, and workers=2 over 1 process."""
    values: dict[str, float | None] = {}
    for modality in ("lfp", "calcium", "behavior"):
        rows = [r for r in report.rows if r.section.startswith(f"NWB {modality}:") and r.library.startswith(NC)]
        one = next((r for r in rows if r.measure == "convert 1 session, 1 process, overlap 0"), None)
        if one is None:
            continue
        values[f"NWB {modality}, 1 process, overlap 0: % of raw h5py read (goal >= 50)"] = one.pct_raw
        single = next((r.mbps for r in rows if r.measure.endswith("sessions, 1 process, overlap 0")), None)
        parallel = next((r.mbps for r in rows if "workers=" in r.measure), None)
        values[f"NWB {modality}: workers=2 / 1 process (goal ~2)"] = (
            parallel / single if single and parallel else None)
    return values


def goals(report: Report) -> str:
    """The goal lines printed under the table."""
    lines = ["", "Goals of issue 5 (measured in this run):"]
    for name, value in goal_values(report).items():
        lines.append(f"- {name}: {'–' if value is None else f'{value:.2f}'}")
    nwb = nwb_goal_values(report)
    if nwb:
        lines += ["", "Goals of issue 13, item 7 (measured in this run):"]
        lines += [f"- {name}: {'–' if value is None else f'{value:.2f}'}" for name, value in nwb.items()]
    if report.guide_goals:
        lines += ["", "Goals of issue 18 (measured in this run):"]
        lines += [f"- {name}: {'–' if value is None else f'{value:.2f}'}" for name, value in report.guide_goals.items()]
    return "\n".join(lines)


def _variant(label: str) -> str | None:
    """The setting a variant row's label names (`fsync=False`, `verify=none`), or None."""
    return next((suffix for suffix in VARIANTS.values() if label.endswith(" " + suffix)), None)


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


def _ratio(nc: float, peer: float, unit: str) -> str:
    return f"{(nc / peer if unit == 'samples/s' else peer / nc):.2f}×"


def _value(row: Row) -> str:
    if row.value is None:
        return "–"
    if row.unit == "s":
        return f"{row.value:.2f} s"
    return f"{row.value:,.0f} {row.unit}"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}%"


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_child(script: str, spec: dict[str, Any], forks: Any = None) -> dict[str, Any]:
    """`python script --child <spec as JSON>` in a fresh Python process, or forked from `forks`
    (a forked.ForkServer: quick runs): the dict it prints last (a measurement script's own child
    mode); RuntimeError with its output when it fails."""
    import json
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    args = ["--child", json.dumps(spec)]
    if forks is None:
        proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=False)
        returncode, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    else:
        with tempfile.TemporaryDirectory(prefix="neurocodec-child-") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            returncode = forks.run(script, args, stdout=out, stderr=err)
            stdout, stderr = out.read_text(), err.read_text()
    if returncode != 0:
        raise RuntimeError(f"measuring {spec} failed:\n{stdout}\n{stderr}")
    return json.loads(stdout.strip().splitlines()[-1])
