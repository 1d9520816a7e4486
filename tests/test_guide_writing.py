"""The user guide's writing and inspecting blocks run as written, only the import line changed.

Each block is taken by its heading at test time from $NEUROCODEC_GUIDE, else the team's shared
spec beside the repository (../shared/spec/seed-guide.md), else the copy in tests/data, so an
edit to the guide is tested as it stands.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from guide import NEW_IMPORT, guide_block, run_block
from neurocodec import Dataset, ShardedDatasetInfo

# The writing blocks make 10,000 samples (the quick start 6 GB of float64) in shards of 1,000.
# They run with those two numbers divided by 50 and nothing else changed: the same code path,
# 10 shards, at 1/50 of the bytes (as written they took 75 s of the suite's 15 minutes).
SCALED = {"10000": "200", "shard_size=1000": "shard_size=20"}


@pytest.fixture
def guide_cwd(tmp_path, monkeypatch):
    """A temp working directory; its ./shards is removed afterwards (pytest keeps old tmp dirs)."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    shutil.rmtree(tmp_path / "shards", ignore_errors=True)


def test_guide_blocks_are_found_and_only_the_import_changes():
    for heading in ("1. Convert Data to Shards", "From Numpy Arrays", "Inspecting Shards"):
        code = guide_block(heading)
        assert NEW_IMPORT in code and "neuros_neurofm" not in code


def test_quick_start_convert_data_to_shards(guide_cwd):
    # randn spikes (100, 96), behavior (100, 2), lfp (64, 1000) as float64, uncompressed, 10 shards
    ns = run_block("1. Convert Data to Shards", replace=SCALED)
    data = ns["data"]
    info = ShardedDatasetInfo("./shards").get_summary()
    assert (info["total_samples"], info["total_shards"], info["compression"]) == (200, 10, "none")
    assert info["shapes"] == {"behavior": [100, 2], "lfp": [64, 1000], "spikes": [100, 96]}
    assert info["dtypes"] == {"behavior": "<f8", "lfp": "<f8", "spikes": "<f8"}
    with Dataset("./shards") as ds:
        for i in (0, 19, 20, 117, 199):
            sample = ds[i]
            assert sample["__key__"] == f"sample_{i + 1:09d}"
            for name in ("spikes", "behavior", "lfp"):
                assert sample[name].dtype == np.float64
                assert sample[name].tobytes() == data[name][i].tobytes()


def test_writing_from_numpy_arrays_then_inspecting(guide_cwd, capsys):
    ns = run_block("From Numpy Arrays", replace=SCALED)
    summary = ns["summary"]
    assert (summary["samples"], summary["shards"], summary["compression"]) == (200, 10, "none")
    assert summary["modalities"] == ["behavior", "spikes"]
    with Dataset("./shards") as ds:
        assert len(ds) == 200
        last = ds[199]
        assert last["metadata"] == {"trial_id": 199, "condition": "right"}
        assert last["spikes"].shape == (100, 96) and last["spikes"].dtype == np.float64
        assert ds[0]["metadata"] == {"trial_id": 0, "condition": "left"}
    capsys.readouterr()
    run_block("Inspecting Shards")
    out = capsys.readouterr().out
    assert "Total samples: 200\nTotal shards: 10\nModalities: ['behavior', 'spikes']\n" in out


def test_inspecting_shards(tmp_path, monkeypatch, capsys, rng):
    monkeypatch.chdir(tmp_path)
    from neurocodec import create_shards_from_arrays

    data = {"spikes": rng.poisson(1, (25, 10, 4)), "lfp": rng.standard_normal((25, 3, 8))}
    create_shards_from_arrays("./shards", data, shard_size=10, fsync=False)
    ns = run_block("Inspecting Shards")
    out = capsys.readouterr().out
    assert ns["summary"]["total_samples"] == 25
    assert out.endswith("Total samples: 25\nTotal shards: 3\nModalities: ['lfp', 'spikes']\n")
    assert "samples: 25" in out.splitlines()[1]  # print_summary ran first
