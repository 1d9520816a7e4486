"""examples/webdataset_example.py (the guide's eight examples) and quickstart.py run at small sizes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.multiprocess
def test_webdataset_example_runs_all_eight(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "webdataset_example.py"), "--samples", "96", "--workdir", str(tmp_path),
         "--workers", "2"], capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr
    for n in range(1, 9):
        assert f"[{n}]" in result.stdout, result.stdout
    assert "stream identical" in result.stdout and "identical streams of 96 unique samples" in result.stdout


def test_quickstart_writes_a_dataset(tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLES / "quickstart.py"), str(tmp_path / "qs")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "wrote 2000 samples in 4 shards" in result.stdout
