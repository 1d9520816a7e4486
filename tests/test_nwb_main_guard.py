"""Worker processes and the main script: the README's NWB block runs as a script exactly as
written, and a script converting with workers from its top level, unguarded, gets an error that
says what is wrong (not BrokenProcessPool, not blamed on an input file)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import nwbfiles
from neurocodec.dataset.reader import Dataset

ROOT = Path(__file__).resolve().parents[1]


def readme_nwb_block() -> str:
    """The README's Python block that converts NWB files (the one making the converter)."""
    blocks = re.findall(r"```python\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
    found = [b for b in blocks if "NWBToWebDatasetConverter(" in b and "data1.nwb" in b]
    assert len(found) == 1, "the README has one NWB conversion block naming data1.nwb"
    return found[0] + "\n"


def run_script(directory: Path, code: str) -> subprocess.CompletedProcess:
    script = directory / "convert.py"
    script.write_text(code)
    return subprocess.run([sys.executable, str(script)], cwd=directory, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.fixture
def inputs(tmp_path) -> Path:
    for i in (1, 2):
        nwbfiles.multirate_session(tmp_path / f"data{i}.nwb", seed=i)
    return tmp_path


@pytest.mark.multiprocess
@pytest.mark.slow
def test_the_readme_nwb_block_runs_as_a_script(inputs):
    done = run_script(inputs, readme_nwb_block())
    assert done.returncode == 0, done.stderr[-3000:]
    with Dataset(inputs / "shards") as ds:
        assert {f.name for f in ds.manifest.modalities} >= {"spikes", "lfp", "behavior"}
        assert len(ds) > 0


@pytest.mark.multiprocess
def test_unguarded_workers_say_what_is_wrong(inputs):
    code = textwrap.dedent("""
        from neurocodec import NWBToWebDatasetConverter

        converter = NWBToWebDatasetConverter("./shards", modalities=["spikes", "lfp"], workers=2, progress=False)
        converter.convert_nwb_files(["data1.nwb", "data2.nwb"])
        converter.finalize()
    """)
    done = run_script(inputs, code)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("neurocodec.nwb.pool.ConversionError: workers=2 cannot start from the top level of")
    assert 'put the code that converts under `if __name__ == "__main__":`' in last
    assert "BrokenProcessPool" not in done.stderr and "bootstrapping" not in done.stderr
    assert "data1.nwb" not in last
    assert not (inputs / "shards" / ".neurocodec" / "dataset_metadata.json").exists()


@pytest.mark.multiprocess
def test_guarded_script_and_one_worker_are_not_refused(inputs):
    guarded = textwrap.dedent("""
        from neurocodec import NWBToWebDatasetConverter

        def main():
            converter = NWBToWebDatasetConverter("./g", modalities=["spikes"], workers=2, progress=False)
            converter.convert_nwb_files(["data1.nwb", "data2.nwb"])
            converter.finalize()

        if "__main__" == __name__:
            main()
    """)
    one_worker = textwrap.dedent("""
        from neurocodec import NWBToWebDatasetConverter

        converter = NWBToWebDatasetConverter("./one", modalities=["spikes"], progress=False)
        converter.convert_nwb_files(["data1.nwb"])
        converter.finalize()
    """)
    for code in (guarded, one_worker):
        done = run_script(inputs, code)
        assert done.returncode == 0, done.stderr[-3000:]
    for name in ("g", "one"):
        with Dataset(inputs / name) as ds:
            assert len(ds) > 0
