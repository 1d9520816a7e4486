"""Helpers for the NWB input tests (Zarr folders, files at URLs): a Zarr copy of an HDF5 NWB
file written by hdmf-zarr, and the stored bytes of a dataset's array fields."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from neurocodec.dataset.reader import Dataset
from neurocodec.format import layout


def zarr_copy(h5_path: str | Path, zarr_path: str | Path) -> Path:
    """`h5_path` exported by hdmf-zarr's NWBZarrIO into the NWB-Zarr folder `zarr_path` (data
    copied, not linked)."""
    from hdmf_zarr.nwb import NWBZarrIO
    from pynwb import NWBHDF5IO

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with NWBHDF5IO(str(h5_path), "r") as src, NWBZarrIO(str(zarr_path), mode="w") as dst:
            dst.export(src_io=src, write_args={"link_data": False})
    return Path(zarr_path)


def array_payloads(path: str | Path) -> list[dict[str, bytes]]:
    """Per sample, the stored bytes of every field except the metadata, read through the shard
    reader (headers and CRC-32 checked)."""
    out = []
    with Dataset(path) as ds:
        names = [f.name for f in ds.fields]
        for number, entry in enumerate(ds.shards):
            reader = ds.shard(number)
            for local in range(entry.samples):
                out.append({name: bytes(reader.read_payload(local, column)) for column, name in enumerate(names)
                            if name != layout.METADATA_FIELD})
    return out


def window_metadata(path: str | Path) -> list[dict]:
    """Every sample's metadata, in order."""
    with Dataset(path) as ds:
        return [dict(sample[layout.METADATA_FIELD]) for sample in ds]


def manifest_sessions(path: str | Path) -> dict:
    """The manifest's `sessions` (key -> session record)."""
    return json.loads((Path(path) / layout.MANIFEST_PATH).read_text())["extra"]["sessions"]
