"""Smoke test of benchmarks/mixing_table.py: the whole script at tiny sizes, in a real subprocess.
Asserts the tables' shape and the benchmark's own check that the mix reads exactly the single
dataset's samples; never a speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mixing_table.py"


@pytest.mark.slow
@pytest.mark.multiprocess
def test_quick_run_prints_the_tables(tmp_path):
    out = tmp_path / "mixing.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)], capture_output=True,
                          text=True, timeout=280)
    assert done.returncode == 0, done.stdout + done.stderr
    text = done.stdout
    assert "the mix reads every sample of the single dataset once per epoch: True" in text
    assert "| loader | samples/s (best) | ÷ single | runs |" in text
    for row in ("| single dataset |", "| mix of 3 |"):  # --quick leaves the weighted row out
        assert row in text
    doc = json.loads(out.read_text())
    assert doc["sizes"] == [300, 200, 100]
    assert {(r["loader"], r["fraction"]) for r in doc["resume"]} == {("mix of 3", 0.0), ("mix of 3", 0.9)}
    assert all(r["seconds"] > 0 and r["peak_rss_kb"] > 0 for r in doc["resume"])
