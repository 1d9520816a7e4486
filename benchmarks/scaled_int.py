"""Integer signals kept as integers: payload bytes, decode speed and loader rate of `scaled-int`
against today's float32 `.npy`, on an int16 EEG-like recording with a conversion factor.

Run: `python benchmarks/scaled_int.py [--seconds 20.625] [--channels 64] [--rate 1000] [--alpha 1]`.

The defaults give 2.64 MB of int16 samples, the size of the EEG recording issue 14 quotes. The
signal is `filter_chains.eeg_like` (1/f^alpha background, amplifier noise, line noise, 0.1 uV per
bit); `--alpha 2` gives a background falling as 1/f^2, closer to scalp EEG above ~20 Hz. The
NWB file is written with pynwb and converted by `NWBToWebDatasetConverter` (1 s windows, overlap
0.5) four ways: codecs npy or neural, members uncompressed or zstd. Payload bytes are the `eeg`
members' sizes in the tar files (as stored). Decode MB/s: float32 (or int16 with raw=True) bytes
over `Dataset` reading every sample, one thread, best of 3. Loader: samples/s of a 2-worker
DataLoader, batch 8, after the first batch.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from filter_chains import UV_PER_BIT, eeg_like  # noqa: E402

from neurocodec import Dataset, NWBToWebDatasetConverter  # noqa: E402
from neurocodec.loader.dataloader import create_webdataset_dataloader  # noqa: E402


def eeg_file(work: Path, seconds: float, channels: int, rate: float, alpha: float) -> Path:
    """An NWB file holding the int16 signal as an ElectricalSeries with its conversion factor."""
    import nwbfiles as nf

    data = eeg_like(seconds, channels, rate, alpha=alpha)
    nwb = nf.new_file(identifier="eeg", session_id="eeg")
    nwb.add_acquisition(nf.electrical_series(nwb, "EEG", data, rate=rate, conversion=UV_PER_BIT * 1e-6))
    print(f"samples: {data.nbytes / 1e6:.2f} MB int16, shape {data.shape}; 1 s windows, overlap 0.5")
    return nf.write(nwb, work / "eeg.nwb")


def payload_bytes(root: Path) -> tuple[int, int]:
    """(windows, bytes of the eeg members as stored)."""
    count = total = 0
    for shard in root.glob("*.tar"):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if ".eeg." in member.name:
                    count, total = count + 1, total + member.size
    return count, total


def decode_mb_s(root: Path, decode: dict | None) -> float:
    """Decoded MB/s of reading every sample's eeg field, best of 3."""
    best = float("inf")
    with Dataset(root, decode=decode) as ds:
        mb = sum(ds[i]["eeg"].nbytes for i in range(len(ds))) / 1e6
        for _ in range(3):
            start = time.perf_counter()
            for i in range(len(ds)):
                ds[i]["eeg"]
            best = min(best, time.perf_counter() - start)
    return mb / best


def loader_samples_s(root: Path, decode: dict | None) -> float:
    """Samples/s of a 2-worker DataLoader after its first batch."""
    batches = iter(create_webdataset_dataloader(root, batch_size=8, num_workers=2, shuffle=False, decode=decode))
    next(batches)
    start, count = time.perf_counter(), 0
    for batch in batches:
        count += len(batch["eeg"])
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    """Convert four ways and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.625)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--alpha", type=float, default=1.0)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="neurocodec-scaled-"))
    try:
        path = eeg_file(work, args.seconds, args.channels, args.rate, args.alpha)
        sizes = {}
        for codecs in ("npy", "neural"):
            for compression in ("none", "zstd"):
                out = work / f"{codecs}-{compression}"
                converter = NWBToWebDatasetConverter(out, 1000, ["eeg"], bin_size_ms=10, sequence_length=100,
                                                     overlap=0.5, compression=compression, codecs=codecs,
                                                     progress=False, fsync=False)
                converter.convert_nwb_files([path])
                converter.finalize()
                sizes[codecs, compression] = payload_bytes(out)
        with Dataset(work / "npy-none") as a, Dataset(work / "neural-none") as b:
            assert all(x["eeg"].tobytes() == y["eeg"].tobytes() for x, y in zip(a, b)), "not bit-identical"
        base = sizes["npy", "zstd"][1]
        print("| codecs | members | windows | payload MB | bytes/window | vs float32 | vs float32+zstd |")
        print("|---|---|--:|--:|--:|--:|--:|")
        for (codecs, compression), (count, total) in sizes.items():
            print(f"| {codecs} | {compression} | {count} | {total / 1e6:.3f} | {total / count:,.0f} | "
                  f"{total / sizes['npy', 'none'][1]:.3f} | {total / base:.3f} |")
        print("\n| read | decode MB/s (1 thread) | loader samples/s (2 workers) |\n|---|--:|--:|")
        for name, root, decode in (("npy float32", "npy-none", None), ("npy float32 + zstd", "npy-zstd", None),
                                   ("scaled-int", "neural-none", None),
                                   ("scaled-int raw=True", "neural-none", {"eeg": {"raw": True}})):
            print(f"| {name} | {decode_mb_s(work / root, decode):,.0f} | {loader_samples_s(work / root, decode):,.0f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
