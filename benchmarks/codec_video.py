"""The av-video codec (plugins/video_codec.py) on camera-like and slice-like frames.

    python benchmarks/codec_video.py                 # the table (about a minute on one core)
    python benchmarks/codec_video.py --json out.json
    python benchmarks/codec_video.py --loader        # also a 2-worker DataLoader's samples/s

For each kind of window it reports the bytes of one window stored as today's uint8 `.npy`, the
same with zstd (level 3, the writer's default, and level 19), and through each av-video config,
with encode and decode rates in MB/s of uint8 frames per core (process CPU time; everything runs
on one thread). Decoding goes through `VideoCodec.decode`, the function the loader's workers
call; lossless configs are checked bit-exact, lossy ones report their PSNR.

The frames are synthetic and seeded. Camera-like: a still textured background, a bright blob
moving across it and Gaussian sensor noise (sigma 2 grey levels, or as given), 30 fps, 1.5 s
windows (45 frames). Slice-like: 45 consecutive slices of a smooth random volume (Gaussian
low-pass of white noise, scaled to 10-240) plus noise of sigma 1, as an fMRI or 2-photon stack.

`--loader` writes 128 camera windows (128x128, 45 frames) as plain npy, npy with zstd member
compression, and through av-video ffv1, ffvhuff and h264 crf 23, then reads each dataset with
`create_webdataset_dataloader(batch_size=8, num_workers=2)`: samples per second of wall time,
best of three epochs (the first one also warms the page cache).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a source checkout without install

from neurocodec import npy  # noqa: E402
from neurocodec.plugin import FieldSpec  # noqa: E402
from neurocodec_plugins.video_codec import VideoCodec  # noqa: E402

CONFIGS = ({"codec": "ffv1"}, {"codec": "ffvhuff"}, {"codec": "png"}, {"codec": "h264", "crf": 0},
           {"codec": "h264", "crf": 18}, {"codec": "h264", "crf": 23}, {"codec": "h264", "crf": 28})


def camera(frames: int, size: int, noise: float, seed: int) -> np.ndarray:
    """Camera-like gray frames (see the module docstring)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    background = 90 + 40 * np.sin(x / 9.0) * np.cos(y / 13.0) + 20 * (x / size)
    out = np.empty((frames, size, size), np.uint8)
    for t in range(frames):
        cx, cy = size / 2 + size / 4 * np.cos((t + seed * 7) / 8), size / 2 + size / 4 * np.sin((t + seed * 7) / 5)
        blob = 120 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (size / 16) ** 2))
        out[t] = np.clip(np.rint(background + blob + rng.normal(0, noise, (size, size))), 0, 255)
    return out


def slices(frames: int, size: int, noise: float, seed: int) -> np.ndarray:
    """Slice-like gray frames: consecutive slices of a smooth random volume."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*(np.fft.fftfreq(n) for n in (frames, size, size)), indexing="ij")
    k = np.sqrt(sum(g ** 2 for g in grid))
    volume = np.real(np.fft.ifftn(np.fft.fftn(rng.normal(size=(frames, size, size))) * np.exp(-(k * 12) ** 2)))
    volume = (volume - volume.min()) / (volume.max() - volume.min()) * 230 + 10 + rng.normal(0, noise, volume.shape)
    return np.clip(np.rint(volume), 0, 255).astype(np.uint8)


def cpu_rate(nbytes: int, work, repeat: int) -> tuple[float, object]:
    """MB/s of `nbytes` per CPU second for `work()`, best of `repeat`; and its last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.process_time()
        result = work()
        best = min(best, time.process_time() - start)
    return nbytes / max(best, 1e-9) / 1e6, result


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def measure(windows: list[np.ndarray], repeat: int) -> list[dict]:
    """One row per storage: mean bytes per window, encode and decode MB/s per core."""
    raw = sum(w.nbytes for w in windows)
    payloads = [npy.encode(w) for w in windows]
    rows = [{"storage": "uint8 npy", "bytes": np.mean([len(p) for p in payloads])}]
    for level in (3, 19):
        compress, decompress = zstandard.ZstdCompressor(level=level), zstandard.ZstdDecompressor()
        enc, packed = cpu_rate(raw, lambda: [compress.compress(p) for p in payloads], 1 if level == 19 else repeat)
        dec, _ = cpu_rate(raw, lambda: [npy.decode(decompress.decompress(p)) for p in packed], repeat)
        rows.append({"storage": f"uint8 npy + zstd-{level}", "bytes": np.mean([len(p) for p in packed]),
                     "encode_MBps": enc, "decode_MBps": dec})
    field = FieldSpec(name="video", modality="video", kind="array", codec={}, extension="ncv", plugin="video",
                      plugin_version="", dtype="|u1", shape=(None,) + windows[0].shape[1:],
                      max_raw_bytes=max(w.nbytes for w in windows) * 2)
    for config in CONFIGS:
        codec = VideoCodec(**config)
        enc, packed = cpu_rate(raw, lambda: [codec.encode(w) for w in windows], repeat)
        dec, decoded = cpu_rate(raw, lambda: [codec.decode(p, field) for p in packed], repeat)
        quality = min(psnr(d, w) for d, w in zip(decoded, windows))
        rows.append({"storage": "av-video " + " ".join(f"{k}={v}" for k, v in config.items()),
                     "bytes": np.mean([len(p) for p in packed]), "encode_MBps": enc, "decode_MBps": dec,
                     "psnr_dB": quality})
    zstd3 = rows[1]["bytes"]
    for row in rows:
        row["of_zstd3"] = row["bytes"] / zstd3
    return rows


def loader_rates(windows: int, frames: int) -> dict[str, float]:
    """Samples/s of a 2-worker DataLoader over the same camera windows stored four ways."""
    from neurocodec import WebDatasetWriter, create_webdataset_dataloader

    data = [camera(frames, 128, 2.0, seed) for seed in range(windows)]
    storages = {"npy": ({}, "none"), "npy + zstd": ({}, "zstd"),
                "av-video ffv1": ({"video": {"id": "av-video", "codec": "ffv1"}}, "none"),
                "av-video ffvhuff": ({"video": {"id": "av-video", "codec": "ffvhuff"}}, "none"),
                "av-video h264 crf=23": ({"video": {"id": "av-video", "codec": "h264", "crf": 23}}, "none")}
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (codecs, compression) in storages.items():
            path = Path(tmp) / name.replace(" ", "_")
            with WebDatasetWriter(path, shard_size=32, compression=compression, fsync=False, codecs=codecs) as w:
                for window in data:
                    w.write_sample({"video": window})
            loader = create_webdataset_dataloader(path, batch_size=8, num_workers=2, shuffle=False)
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                count = sum(len(batch["video"]) for batch in loader)
                best = min(best, time.perf_counter() - start)
            assert count == windows
            rates[name] = windows / best
            megabytes = rates[name] * data[0].nbytes / 1e6
            print(f"loader, {name:22} {rates[name]:8.1f} samples/s ({megabytes:.1f} MB/s of frames)")
    return rates


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=4, help="windows per kind (default 4)")
    parser.add_argument("--frames", type=int, default=45, help="frames per window (default 45: 1.5 s at 30 fps)")
    parser.add_argument("--repeat", type=int, default=3, help="best of N timings (default 3)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--loader", action="store_true", help="also measure a 2-worker DataLoader")
    args = parser.parse_args(argv)
    kinds = {
        "camera 64x64, noise 2": lambda s: camera(args.frames, 64, 2.0, s),
        "camera 128x128, noise 2": lambda s: camera(args.frames, 128, 2.0, s),
        "camera 128x128, noise 0.5": lambda s: camera(args.frames, 128, 0.5, s),
        "slices 128x128, noise 1": lambda s: slices(args.frames, 128, 1.0, s),
        "slices 128x128, noise 0": lambda s: slices(args.frames, 128, 0.0, s),
    }
    results = {}
    for name, make in kinds.items():
        windows = [make(seed) for seed in range(args.windows)]
        results[name] = rows = measure(windows, args.repeat)
        print(f"\n{name}: {args.windows} windows of {windows[0].shape}, {windows[0].nbytes} bytes of uint8 frames")
        print(f"{'storage':34} {'bytes/window':>12} {'of zstd-3':>9} {'enc MB/s':>9} {'dec MB/s':>9} {'PSNR dB':>8}")
        for r in rows:
            enc, dec, quality = (r.get(k, float("nan")) for k in ("encode_MBps", "decode_MBps", "psnr_dB"))
            print(f"{r['storage']:34} {r['bytes']:12.0f} {r['of_zstd3']:9.3f} {enc:9.1f} {dec:9.1f} {quality:8.1f}")
    if args.loader:
        results["loader_samples_per_s"] = loader_rates(128, args.frames)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
