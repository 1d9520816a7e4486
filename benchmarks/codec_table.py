"""The codec table: bytes, encode/decode speed and loader rate of each codec on real-shaped data.

Run: `python benchmarks/codec_table.py [--quick] [--json out.json]`.

Rows, each through the APIs users call (the converter or `WebDatasetWriter` to write, `Dataset`
to decode, `create_webdataset_dataloader` with 2 workers, batch 32, to load):

- spikes: a real session, pynapple's A2929 (15 units, 98,794 spikes; fetched into the test
  cache by `tests/test_nwb_real.py`), 10 ms bins, 100-bin windows, overlap 0.5, converted with
  `codecs="npy"` (today's dense counts) and `codecs="neural"` (events), without and with zstd;
- int16 EEG with a conversion factor: an NWB file written with pynwb holding the EEG-like int16
  signal of `filter_chains.py` (64 channels, 1 kHz, `--seconds`), as float32 (npy) and as raw
  integers (neural), without and with zstd;
- int16 fMRI volumes with a conversion factor: smooth 64x64x32 volumes, written with
  `WebDatasetWriter`, as float32 npy and through the `scaled-int` codec;
- camera-like video: a still background, a moving blob and sensor noise, 128x128 gray at 30
  fps, 2 s windows: uint8 npy, npy+zstd, FFV1, PNG and H.264 (crf 23).

Bytes are the dataset's shard files (tar and index) over the windows; "payload" is the field's
members only. Encode MB/s is decoded-array bytes over the writing time (conversion time for
NWB rows, one process); decode MB/s is decoded-array bytes over `Dataset` reading every sample
(one thread, best of `--repeat`); the loader column is samples/s after the first batch.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from filter_chains import UV_PER_BIT, eeg_like  # noqa: E402

from neurocodec import Dataset, WebDatasetWriter  # noqa: E402
from neurocodec.format.home import manifest_path  # noqa: E402
from neurocodec.loader.dataloader import create_webdataset_dataloader  # noqa: E402
from neurocodec.nwb.converter import NWBToWebDatasetConverter  # noqa: E402

PYNAPPLE = Path.home() / ".cache/neurocodec-test-data/pynapple-0.11.4-nwb/pynapple-0.11.4/tests/nwbfilestest" \
    "/neurosuite/pynapplenwb/A2929-200711.nwb"


def dataset_bytes(path: Path, field: str) -> tuple[int, int, int]:
    """(shard and index bytes, bytes of `field`'s members as stored, windows)."""
    doc = json.loads(manifest_path(path).read_text())
    total = sum(s["bytes"] + s["index_bytes"] for s in doc["shards"])
    member = 0
    with Dataset(path) as ds:
        column = [f.name for f in ds.manifest.fields].index(field)
        for number, entry in enumerate(ds.shards):
            reader = ds.shard(number)
            member += sum(len(reader.stored_payloads(i)[column][0]) for i in range(entry.samples))
    return total, member, doc["total_samples"]


def decode_rate(path: Path, repeat: int, decode: dict | None = None) -> tuple[float, int]:
    """(MB/s of decoded arrays, array bytes) reading every sample with `Dataset`."""
    with Dataset(path, decode=decode) as ds:
        nbytes = sum(v.nbytes for s in ds for v in s.values() if isinstance(v, np.ndarray))
        best = min(_timed(lambda: [None for _ in ds]) for _ in range(repeat))
    return nbytes / 1e6 / best, nbytes


def loader_rate(path: Path, batches: int = 60) -> float:
    """Samples/s of a 2-worker `create_webdataset_dataloader` after its first batch."""
    loader = create_webdataset_dataloader(path, batch_size=32, num_workers=2, shuffle=True, seed=0)
    seen, start, first = 0, None, 0
    for _ in range(8):  # epochs, until enough batches
        for batch in loader:
            size = len(batch["metadata"])
            if start is None:
                start, first = time.perf_counter(), size
            seen += size
            batches -= 1
            if batches <= 0:
                return (seen - first) / (time.perf_counter() - start)
    return (seen - first) / (time.perf_counter() - start)


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def row(name: str, path: Path, field: str, encode_s: float, repeat: int, raw_mb: float | None = None) -> dict:
    """One table row for the dataset at `path`."""
    total, member, windows = dataset_bytes(path, field)
    decode, nbytes = decode_rate(path, repeat)
    return {"data": name, "codec": path.name.split("~", 1)[1], "windows": windows, "bytes_per_window": total / windows,
            "payload_per_window": member / windows, "dataset_mb": total / 1e6,
            "encode_mb_s": (raw_mb if raw_mb is not None else nbytes / 1e6) / encode_s,
            "decode_mb_s": decode, "loader_samples_s": loader_rate(path)}


def convert_nwb(source: Path, out: Path, modalities: list[str], codecs: str, compression: str,
                **window: Any) -> float:
    """Seconds to convert `source` into `out`."""
    def run() -> None:
        with NWBToWebDatasetConverter(out, 1000, modalities, compression=compression, codecs=codecs,
                                      progress=False, fsync=False, overwrite=True, **window) as converter:
            converter.convert_nwb_files([source])
            converter.finalize()
    return _timed(run)


def nwb_rows(label: str, source: Path, work: Path, modality: str, repeat: int, **window: Any) -> list[dict]:
    """npy and neural conversions of `source`, without and with zstd."""
    rows = []
    for codecs in ("npy", "neural"):
        for compression in ("none", "zstd"):
            out = work / f"{label}~{codecs}{'+zstd' if compression == 'zstd' else ''}"
            seconds = convert_nwb(source, out, [modality], codecs, compression, **window)
            rows.append(row(label, out, modality, seconds, repeat))
            _check_same(work / f"{label}~npy", out, modality)
    return rows


def _check_same(reference: Path, other: Path, field: str) -> None:
    """The neural dataset must decode to exactly what the npy one holds."""
    with Dataset(reference) as a, Dataset(other) as b:
        for x, y in zip(a, b):
            assert x[field].tobytes() == y[field].tobytes(), f"{other} does not decode to {reference}"


def eeg_file(path: Path, seconds: float) -> Path:
    """An NWB file with the EEG-like int16 signal stored with its conversion factor."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    import nwbfiles as nf

    nwb = nf.new_file(identifier="eeg-bench", session_id="eeg-bench")
    data = eeg_like(seconds, 64, 1000.0)
    series = nf.electrical_series(nwb, "EEG", data, rate=1000.0, conversion=UV_PER_BIT * 1e-6)
    nwb.add_acquisition(series)
    return nf.write(nwb, path)


def written_rows(label: str, frames: np.ndarray, field: str, work: Path, configs: dict[str, dict | None],
                 repeat: int, window: int, compression_for: Callable[[str], str] = lambda n: "none",
                 value: Callable[[str, slice], Any] | None = None) -> list[dict]:
    """Windows of `frames` written with each codec config (None: the modality's own npy);
    `value(name, rows)` gives what codec `name` is given for the window `frames[rows]`."""
    rows = []
    spans = [slice(i, i + window) for i in range(0, len(frames) - window + 1, window)]
    value = value or (lambda name, span: frames[span])
    raw_mb = sum(frames[s].nbytes for s in spans) / 1e6
    for name, config in configs.items():
        out = work / f"{label}~{name}"
        codecs = {} if config is None else {field: config}

        def write() -> None:
            with WebDatasetWriter(out, 1000, compression_for(name), codecs=codecs, fsync=False,
                                  overwrite=True) as writer:
                for span in spans:
                    writer.write_sample({field: value(name, span)})
        rows.append(row(label, out, field, _timed(write), repeat, raw_mb))
    return rows


def camera(frames: int, side: int = 128, seed: int = 0) -> np.ndarray:
    """Gray camera frames: a still textured background, a moving dark blob, sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side]
    background = 120 + 40 * np.sin(x / 9.0) * np.cos(y / 13.0) + rng.normal(0, 6, (side, side))
    out = np.empty((frames, side, side), np.uint8)
    for t in range(frames):
        cx, cy = side / 2 + side / 4 * np.cos(t / 15), side / 2 + side / 4 * np.sin(t / 11)
        blob = 90 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 8.0**2))
        out[t] = np.clip(background - blob + rng.normal(0, 2.0, (side, side)), 0, 255)
    return out


def volumes(count: int, seed: int = 0) -> np.ndarray:
    """int16 fMRI-like volumes (time, x, y, z): a smooth brain-shaped mean, slow drifts, noise."""
    rng = np.random.default_rng(seed)
    x, y, z = np.mgrid[-1:1:64j, -1:1:64j, -1:1:32j]
    brain = 900 * np.exp(-(x**2 + y**2 + (1.6 * z) ** 2) * 2.5)
    drift = rng.normal(0, 1, (count, 1, 1, 1)).cumsum(0)
    return np.round(brain + drift * 3 + rng.normal(0, 12, (count, 64, 64, 32))).astype(np.int16)


def render(rows: list[dict]) -> str:
    """A markdown table."""
    head = ("| data | codec | windows | bytes/window | payload/window | dataset MB | encode MB/s | decode MB/s "
            "| loader samples/s |\n|---|---|--:|--:|--:|--:|--:|--:|--:|")
    lines = [f"| {r['data']} | {r['codec']} | {r['windows']} | {r['bytes_per_window']:,.0f} | "
             f"{r['payload_per_window']:,.0f} | {r['dataset_mb']:.2f} | {r['encode_mb_s']:.0f} | "
             f"{r['decode_mb_s']:.0f} | {r['loader_samples_s']:,.0f} |" for r in rows]
    return "\n".join([head, *lines])


def main(argv: list[str] | None = None) -> int:
    """Build every row and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short recordings, one repetition")
    parser.add_argument("--seconds", type=float, default=300.0, help="EEG recording length (default 300)")
    parser.add_argument("--repeat", type=int, default=3, help="decode timings, best kept (default 3)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    repeat, seconds = (1, 30.0) if args.quick else (args.repeat, args.seconds)
    work = Path(tempfile.mkdtemp(prefix="neurocodec-codecs-"))
    rows: list[dict] = []
    try:
        if PYNAPPLE.exists():
            rows += nwb_rows("spikes A2929", PYNAPPLE, work, "spikes", repeat,
                             bin_size_ms=10.0, sequence_length=100, overlap=0.5)
        else:
            print(f"skipping spikes: {PYNAPPLE} is not there (run tests/test_nwb_real.py once)", file=sys.stderr)
        rows += nwb_rows("EEG int16", eeg_file(work / "eeg.nwb", seconds), work, "eeg", repeat,
                         bin_size_ms=1.0, sequence_length=1000, overlap=0.0)
        rows += video_rows(work, repeat, 240 if args.quick else 1800)
        rows += fmri_rows(work, repeat, 20 if args.quick else 120)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(render(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


def video_rows(work: Path, repeat: int, frames: int) -> list[dict]:
    """Camera-like video with npy, npy+zstd, FFV1, PNG and H.264."""
    configs = {"npy": None, "npy+zstd": None, "ffv1": {"id": "av-video", "codec": "ffv1"},
               "png": {"id": "av-video", "codec": "png"}, "h264-crf23": {"id": "av-video", "codec": "h264", "crf": 23}}
    return written_rows("video 128x128", camera(frames), "video", work, configs, repeat, 60,
                        compression_for=lambda n: "zstd" if n == "npy+zstd" else "none")


def fmri_rows(work: Path, repeat: int, count: int) -> list[dict]:
    """int16 volumes as float32 npy (with and without zstd) and as scaled integers."""
    from neurocodec.plugin import ScaledSignal, scaled_codec

    raw, conversion = volumes(count), 0.01
    physical = (raw.astype(np.float64) * conversion).astype(np.float32)
    configs = {"npy": None, "npy+zstd": None,
               "scaled-int (no filters)": {"id": "scaled-int", "raw_dtype": "<i2", "order": "C"},
               "scaled-int": scaled_codec("<i2", order="C")}

    def value(name: str, span: slice) -> Any:
        return ScaledSignal(raw=raw[span], conversion=conversion) if name.startswith("scaled") else physical[span]
    return written_rows("fMRI int16", physical, "fmri", work, configs, repeat, 10,
                        compression_for=lambda n: "zstd" if n == "npy+zstd" else "none", value=value)


if __name__ == "__main__":
    sys.exit(main())
