"""The guide's "From NWB Files" block runs as written (import line changed) on real pynwb files."""

from __future__ import annotations

import nwbfiles
from guide import run_block
from neurocodec import Dataset


def test_from_nwb_files(tmp_path, monkeypatch):
    for seed, name in enumerate(("data", "data1", "data2", "data3")):
        nwbfiles.multirate_session(tmp_path / f"{name}.nwb", t0=1.5 * seed, seconds=6.0, seed=seed)
    monkeypatch.chdir(tmp_path)
    ns = run_block("From NWB Files")
    summary = ns["summary"]
    assert summary["modalities"] == ["behavior", "lfp", "spikes", "spikes_observed"]
    assert [p.rsplit("/", 1)[-1] for p in summary["files"]] == ["data.nwb", "data1.nwb", "data2.nwb", "data3.nwb"]
    with Dataset(tmp_path / "shards") as ds:
        assert len(ds) == summary["samples"] > 0
        first = ds[0]
        assert first["spikes"].shape == (100, 4) and first["lfp"].shape == (1000, 2)
        assert first["behavior"].shape == (50, 2)
        assert first["metadata"]["source_file"] == "data.nwb"
        assert ds[len(ds) - 1]["metadata"]["source_file"] == "data3.nwb"


def test_every_name_of_the_guides_api_reference_imports_from_both_paths():
    import neurocodec
    import neurocodec.datasets

    names = ["WebDatasetWriter", "NWBToWebDatasetConverter", "create_shards_from_arrays", "WebDatasetLoader",
             "ResumableWebDatasetLoader", "create_webdataset_dataloader", "ShardedDatasetInfo",
             "collate_webdataset"]
    for name in names:
        assert getattr(neurocodec, name) is getattr(neurocodec.datasets, name), name
    for cls in (neurocodec.WebDatasetLoader, neurocodec.ResumableWebDatasetLoader):
        assert callable(cls.get_state) and callable(cls.set_state)
