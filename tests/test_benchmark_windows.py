"""Smoke test of benchmarks/windows_table.py: the whole script at tiny sizes, in a real subprocess.

Asserts the tables' shape, the byte counts' meaning (chunks store each second once, pre-cut
windows at overlap 0.5 twice), the windows per epoch and the benchmark's own checks that the
windows it reads are the right ones; never a speed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "windows_table.py"
ROWS = [("pre-cut 1 s, overlap 0.5", "pre-cut"), ("pre-cut 1 s, overlap 0.5", "pre-cut, spikes as events"),
        ("chunks 10 s", "window 1 s, jitter"), ("chunks 10 s", "window 1 s, grid"),
        ("chunks 10 s", "window 1 s, jitter, spikes as events"), ("chunks 1 s", "window 1 s, jitter")]


def _module():
    spec = importlib.util.spec_from_file_location("windows_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_covered_seconds_is_the_union_of_the_windows():
    covered = _module().covered_seconds
    assert covered([(0.0, 1.0), (0.5, 1.5), (1.0, 2.0)]) == 2.0  # overlap 0.5: each second twice, counted once
    assert covered([(3.0, 4.0), (0.0, 1.0), (1.0, 2.0)]) == 3.0  # touching and apart, in any order
    assert covered([(0.0, 2.0), (0.5, 1.0)]) == 2.0
    assert covered([]) == 0.0


@pytest.mark.slow
@pytest.mark.multiprocess
def test_quick_run_prints_both_tables_and_checks_the_windows(tmp_path):
    out = tmp_path / "windows.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out), "--workdir",
                           str(tmp_path / "work"), "--keep"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert "| dataset | stored samples | shard bytes | index bytes | manifest bytes | total MB |" in text
    assert "| dataset | loading | windows/epoch | samples/s | ÷ pre-cut | recording s/s | ÷ pre-cut |" in text
    assert "MISMATCH" not in text and "goal (chunks 10 s" in text

    doc = json.loads(out.read_text())
    seconds = doc["size"]["seconds"]
    assert seconds == 120 and doc["checks_ok"] is True
    # The benchmark compared every grid window with the pre-cut window at its start time, and
    # every jittered window's LFP with the NWB file's rows.
    grid, jitter = doc["checks"]["grid"], doc["checks"]["jitter"]
    assert grid == {"windows": 120, "matched": 120, "equal": 120}
    assert jitter["windows"] in (119, 120) and jitter["lfp_equal"] == jitter["windows"] and jitter["tiled"]

    datasets = doc["datasets"]
    assert [d["stored_samples"] for d in datasets.values()] == [2 * seconds - 1, seconds / 10, seconds]
    for d in datasets.values():
        b = d["bytes"]
        files = Path(d["path"])  # the sizes of the files on disk, counted here
        assert b["shards"] == sum(p.stat().st_size for p in files.glob("shard_*.tar"))
        assert b["index"] == sum(p.stat().st_size for p in files.glob(".shard_*.idx"))
        assert b["manifest"] == (files / ".neurocodec" / "dataset_metadata.json").stat().st_size
        assert b["total"] == b["shards"] + b["index"] + b["manifest"]
    precut = datasets["pre-cut 1 s, overlap 0.5"]["bytes"]["total"]
    assert datasets["chunks 10 s"]["bytes"]["total"] < 0.6 * precut  # each second stored once, not twice

    rows = {(r["dataset"], r["row"]): r for r in doc["rows"]}
    assert list(rows) == ROWS
    assert rows[ROWS[0]]["windows_per_epoch"] == 2 * seconds - 1
    assert rows[ROWS[3]]["windows_per_epoch"] == seconds
    assert rows[ROWS[2]]["windows_per_epoch"] in (seconds - 1, seconds)
    assert rows[ROWS[0]]["covered_s_per_epoch"] == pytest.approx(seconds)
    for r in doc["rows"]:
        assert r["samples_s"] > 0 and r["recording_s_s"] > 0
        # recording s/s is samples/s times the seconds an epoch covers per window
        assert r["recording_s_s"] == pytest.approx(r["samples_s"] * r["covered_s_per_epoch"] / r["windows_per_epoch"])
    assert set(doc["goal"]) == {"bytes_ratio", "samples_ratio", "recording_ratio", "met"}
