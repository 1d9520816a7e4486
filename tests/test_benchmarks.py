"""Smoke test of benchmarks/bench.py: the whole script at tiny sizes, in a real subprocess.

Only the table's shape and the correctness checks are asserted, never a speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


def run_bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run bench.py with `args`; output captured as text."""
    return subprocess.run([sys.executable, str(BENCH), *args], cwd=cwd, capture_output=True, text=True, check=False,
                          timeout=280)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_quick_run_prints_the_full_table(tmp_path):
    out = tmp_path / "results.json"
    proc = run_bench("--quick", "--quiet", "--json", str(out), "--workdir", str(tmp_path / "work"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert ("| workload | measure | library | value | MB/s | % of raw | neurocodec ÷ peer | peak RSS MB | note |"
            in text)
    assert "checksums: all" in text and "returned the source data" in text
    assert "MISMATCH" not in text and "failed" not in text
    # Every peer is either measured (with its version) or skipped with its import error.
    for peer in ("webdataset", "mosaicml-streaming", "litdata"):
        line = next(ln for ln in text.splitlines() if ln.startswith(f"- {peer}: "))
        assert "SKIPPED (" in line or line.split(": ", 1)[1][0].isdigit(), line

    doc = json.loads(out.read_text())
    rows = doc["rows"]
    nc = [r for r in rows if r["library"].startswith("neurocodec")]
    measures = {(r["section"].split(":")[0].split(" ")[0], r["measure"]) for r in nc}
    for expected in [("seed", "write"), ("seed", "read, 1 process"), ("lfp", "read, 1 process"),
                     ("seed", "epoch, after the first batch"), ("seed", "first batch, resumed at 90%"),
                     ("resume", "first batch, fresh"), ("NWB", "convert 1 session, 1 process, overlap 0"),
                     ("NWB", "convert 1 session, 1 process, overlap 0.5"), ("NWB", "convert 2 sessions, workers=2, overlap 0")]:
        assert expected in measures, (expected, sorted(measures))
    for row in nc:
        if row["unit"] in ("samples/s", "s"):
            assert row["value"] > 0, row
    # Both writer settings are reported, and the raw read sets the % of raw for the readers.
    assert any("fsync=False" in r["library"] for r in rows if r["measure"] == "write")
    raw = [r for r in rows if r["library"] == "raw file read"]
    assert len(raw) == 2 and all(r["pct_raw"] == 100.0 for r in raw)
    reads = [r for r in rows if r["measure"] == "read, 1 process" and r["library"] != "raw file read"]
    assert reads and all(r["pct_raw"] is not None and r["note"].startswith("checksum ok") for r in reads)
    # neurocodec is read again without payload CRCs (verify="none"), and the peers' ratios name it.
    noverify = [r for r in reads if r["library"].endswith(" verify=none")]
    assert {r["section"] for r in noverify} == {r["section"] for r in raw}
    assert all(r["library"].startswith("neurocodec ") for r in noverify)
    peer_reads = [r for r in reads if r["library"].split(" ")[0] in ("webdataset", "litdata", "mosaicml-streaming")]
    assert all(r["ratio"].endswith("× verify=none)") for r in peer_reads), peer_reads
    # The zero-cost reader (the checksum alone over views of the shards) has a row per workload, no ratio.
    floors = {r["section"]: r for r in reads if r["library"] == "zero-cost reader (floor)"}
    assert len(floors) == 2 and all(r["ratio"] == "" for r in floors.values())
    # Resuming at 90% delivers exactly the rest of the epoch.
    resumed = [r for r in nc if r["measure"] == "first batch, resumed at 90%"]
    assert resumed and "WRONG" not in resumed[0]["note"]
    assert doc["mismatches"] == []
    assert set(doc["goals"]) and doc["quick"] is True
    _check_nwb_rows(rows, doc["nwb_goals"])
    _check_guide_rows(rows, doc["guide_goals"])
    _check_remote_rows(rows)
    _check_cold_rows(rows, doc["guide_goals"])


def _check_nwb_rows(rows: list[dict], goals: dict) -> None:
    """NWB conversion per modality: h5py's raw read of the same arrays, conversions as a share of
    it, and the scaling of two worker processes over one."""
    sections = {r["section"].split(":")[0] for r in rows if r["section"].startswith("NWB ")}
    assert {"NWB spikes", "NWB lfp", "NWB behavior", "NWB all", "NWB workers"} <= sections, sections
    startup = [r for r in rows if r["section"].startswith("NWB workers:")]
    assert len(startup) == 1 and startup[0]["value"] > 0 and startup[0]["unit"] == "s", startup
    sections.remove("NWB workers")
    for section in sections:
        mine = [r for r in rows if r["section"].startswith(section + ":")]
        if any(r["note"].startswith("skipped: no installed plugin") for r in mine):
            continue  # a modality whose plugin is not installed (calcium, before its plugin)
        raw = [r for r in mine if r["library"] == "h5py"]
        assert len(raw) == 1 and raw[0]["mbps"] > 0 and raw[0]["pct_raw"] == 100.0, mine
        converts = [r for r in mine if r["measure"].startswith("convert ")]
        assert converts and all(r["value"] > 0 and r["mbps"] > 0 and r["pct_raw"] > 0 for r in converts), mine
    workers = [r for r in rows if r["section"].startswith("NWB lfp:") and "workers=2" in r["measure"]]
    assert len(workers) == 1 and "scaling" in workers[0]["note"], workers
    assert goals["NWB lfp: workers=2 / 1 process (goal ~2)"] > 0
    assert goals["NWB lfp, 1 process, overlap 0: % of raw h5py read (goal >= 50)"] > 0


def _check_remote_rows(rows: list[dict]) -> None:
    """Issue 18 point 4: the remote rows per reader (empty cache before and now, filled, local),
    with the empty/filled ratio named against its goal, on the small and the large shards, and
    moto's raw GET rate; every read checked against the local copy (a mismatch raises)."""
    remote = [r for r in rows if r["section"].startswith("remote: ")]
    assert remote and not any(r["note"].startswith("skipped") for r in remote), remote
    sections = {r["section"] for r in remote}
    assert len(sections) == 3 and any("KiB parts" in s for s in sections), sections
    assert any("each GET answered after 20 ms" in s for s in sections), sections
    for reader in ("Dataset", "WebDatasetLoader(shuffle=True)", "DataLoader (2 workers)"):
        for measure in ("read from local disk", "read from S3, empty cache, 1 download thread, whole shards",
                        "read from S3, empty cache, parallel ranged downloads", "read from S3, cache filled"):
            assert any(r["measure"] == f"{reader}: {measure}" and r["value"] > 0 for r in remote), (reader, measure)
    goals = [r for r in remote if r["measure"].endswith("parallel ranged downloads")]
    assert len(goals) == 5 and all("of the filled cache (goal >= 50%)" in r["note"] for r in goals), goals
    raw = [r for r in remote if r["measure"].startswith("moto's raw GET rate")]
    assert len(raw) == 6 and all(r["mbps"] > 0 for r in raw), raw


def _check_guide_rows(rows: list[dict], goals: dict) -> None:
    """Issue 18: the guide's datasets beside the peers' in one process (Dataset the floor), and
    the DataLoader under every start method over a short and a long epoch."""
    one = [r for r in rows if "the guide's datasets" in r["section"]]
    by = {(r["measure"].split(",")[0], r["library"].split(" ", 2)[-1]): r for r in one}
    for measure, api in [("iterate in stored order", "Dataset"), ("iterate in stored order", "WebDatasetLoader"),
                         ("iterate in stored order", "ResumableWebDatasetLoader"),
                         ("iterate shuffled", "WebDatasetLoader shuffle"), ("random access ds[i]", "Dataset[i]"),
                         ("random access ds[i]", "RandomAccessWebDataset[i]")]:
        row = by[(measure, api)]
        assert row["value"] > 0 and row["note"].startswith("checksum ok"), row
        assert row["note"].endswith("the floor") if api.startswith("Dataset") else "% of Dataset" in row["note"], row
    peers = [r for r in one if not r["library"].startswith("neurocodec")]
    assert all(r["note"].startswith("checksum ok") and r["ratio"].endswith("×") for r in peers), peers
    contexts = {}
    for row in rows:
        if row["section"].endswith("by start method") and row["library"].startswith("neurocodec"):
            contexts.setdefault(row["section"].split(":")[0], set()).add(row["measure"])
    for context in ("fork", "spawn", "forkserver"):
        for what in ("epoch, start-up excluded", "epoch, start-up included", "workers up (first 3 batches)"):
            assert f"{context}: {what}" in contexts["tiny"], (context, what, contexts)
    assert "fork: epoch, start-up excluded" in contexts["seed"]
    for row in rows:
        if row["section"].endswith("by start method"):
            assert row["value"] > 0, row
            assert "start-up excluded" not in row["measure"] or row["note"].startswith("checksum ok"), row
    assert goals["WebDatasetLoader / Dataset (goal >= 0.9)"] > 0
    assert goals["DataLoader 2000 samples, spawn / fork, start-up excluded (goal >= 0.8)"] > 0
    assert goals["DataLoader 2000 samples, forkserver / fork, start-up included"] > 0


def _check_cold_rows(rows: list[dict], goals: dict) -> None:
    """Issue 18 point 3: with the page cache dropped before each run, a raw read of neurocodec's
    shard files (the ceiling) and each way of reading, neurocodec's also with readahead off."""
    for wl in ("seed", "lfp"):
        mine = [r for r in rows if r["section"].startswith(f"{wl}:") and r["section"].endswith("(cold)")]
        raw = [r for r in mine if r["library"] == "raw cold read"]
        assert len(raw) == 1 and raw[0]["mbps"] > 0 and raw[0]["pct_raw"] == 100.0, mine
        apis = {r["library"].split(" ", 2)[-1] for r in mine if r["library"].startswith("neurocodec")}
        expected = {"Dataset", "WebDatasetLoader", "WebDatasetLoader shuffle"} | ({"DataLoader"} if wl == "seed" else set())
        assert apis == expected | {f"{api} readahead off" for api in expected}, apis
        for row in mine:
            assert row["value"] > 0 and row["pct_raw"] > 0 and "dropped by " in row["note"], row
            assert row is raw[0] or row["note"].startswith("checksum ok"), row
        assert goals[f"cold {wl}: WebDatasetLoader shuffle / raw cold read (goal >= 0.8)"] > 0


def test_unknown_stage_is_refused(tmp_path):
    proc = run_bench("--only", "seed,bogus", cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown stage or library: bogus" in proc.stderr


def test_too_short_nwb_sessions_are_refused(tmp_path):
    proc = run_bench("--only", "nwb", "--nwb-seconds", "3", cwd=tmp_path)
    assert proc.returncode == 2
    assert "--nwb-seconds must be at least 10" in proc.stderr


def test_order_table_quick_rows(tmp_path):
    """benchmarks/order_table.py --quick: a row per size (10^3, 10^4, 10^5 samples) with the build,
    seek and per-sample times and the peak memory, each batch checked by the child."""
    out = tmp_path / "order.json"
    proc = subprocess.run([sys.executable, str(BENCH.parent / "order_table.py"), "--quick", "--json", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| samples | shards | build + seek to 90% s |" in proc.stdout and "WRONG" not in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [(r["samples"], r["shards"]) for r in rows] == [(10**3, 1), (10**4, 10), (10**5, 100)]
    for row in rows:
        assert row["ok"] and row["build_s"] > 0 and row["stream_us"] > 0 and row["peak_kb"] >= row["before_kb"] > 0


def test_startup_table_smoke_rows(tmp_path):
    """benchmarks/startup_table.py at its smoke size: a row per mode, every sample read, the same
    data in every mode (the script exits otherwise); never a speed."""
    proc = subprocess.run([sys.executable, str(BENCH.parent / "startup_table.py"), "--quick", "--contexts", "fork",
                           "--workloads", "seed"], cwd=tmp_path, capture_output=True, text=True, check=False, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "| epoch | mode | fork |" in lines
    assert [line.split(" | ")[:2] for line in lines if line.startswith("| seed 200")] == [
        ["| seed 200", "default: workers only when worth starting"],
        ["| seed 200", "workers always started, batches built here until ready"],
        ["| seed 200", "workers always started, first batch only built here"]]
