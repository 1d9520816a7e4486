"""Bytes per window and encode/decode speed of array filter chains on EEG-like int16 signals.

Run: `python benchmarks/filter_chains.py [--seconds 300] [--channels 64] [--rate 1000] [--window 1.0]`.

The signal (no real int16 EEG ships with the installed packages' test data) is synthetic but
shaped like a scalp recording stored by an amplifier as int16 with a conversion factor: per
channel, 1/f ("pink") background of 20 uV rms mixed with a common component shared by all
channels (volume conduction), 0.5 uV rms white amplifier noise, 50 Hz line noise of 2-8 uV, the
amplifier's anti-aliasing low-pass at a quarter of the sampling rate (250 Hz at 1 kHz), and
quantisation at 0.1 uV per bit (BrainVision's resolution). `--lowpass-hz 0 --noise-uv 1` gives
a harder, full-band variant. Windows are (time, channels).

Rows: today's payload (float32 .npy, physical units), with and without zstd member compression;
the raw int16 .npy with and without zstd; and `ndarray` chains. MB/s are of decoded array bytes,
one thread (this process), best of 3.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import numpy as np
import zstandard

from neurocodec import npy
from neurocodec.plugin import ArrayCodec, FieldSpec, signal_codec

UV_PER_BIT = 0.1


def eeg_like(seconds: float, channels: int, rate: float, *, noise_uv: float = 0.5,
             lowpass_hz: float | None = 250.0, alpha: float = 1.0, seed: int = 0) -> np.ndarray:
    """int16 (time, channels) counts of an EEG-like signal at `UV_PER_BIT`: 1/f^alpha background
    (20 uV rms, partly common to all channels), white amplifier noise (`noise_uv` rms before
    the filter), 50 Hz line noise, all through the amplifier's anti-aliasing low-pass
    (4th-order Butterworth magnitude at `lowpass_hz`; None: none)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    freqs = np.fft.rfftfreq(n, 1 / rate)
    pink_shape = np.zeros_like(freqs)
    pink_shape[1:] = freqs[1:] ** (-alpha / 2)  # power ~ 1/f^alpha
    gain = np.ones_like(freqs) if lowpass_hz is None else 1 / np.sqrt(1 + (freqs / lowpass_hz) ** 8)

    def noise(k: int, shape: np.ndarray) -> np.ndarray:
        spec = (rng.standard_normal((k, freqs.size)) + 1j * rng.standard_normal((k, freqs.size))) * shape
        out = np.fft.irfft(spec, n, axis=1).T
        return out / out.std(axis=0)

    common, own = noise(1, pink_shape), noise(channels, pink_shape)
    mix = rng.uniform(0.4, 0.8, channels)
    background = 20.0 * (mix * common + np.sqrt(1 - mix**2) * own)
    t = np.arange(n) / rate
    line = rng.uniform(2, 8, channels) * np.sin(2 * np.pi * 50 * t[:, None] + rng.uniform(0, 2 * np.pi, channels))
    white = noise_uv * noise(channels, np.ones_like(freqs))
    spectrum = np.fft.rfft(background + white + line, axis=0) * gain[:, None]
    uv = np.fft.irfft(spectrum, n, axis=0)
    return np.clip(np.round(uv / UV_PER_BIT), -32768, 32767).astype("<i2")


def best_seconds(fn: Callable[[], Any], repeat: int = 3) -> float:
    """The shortest of `repeat` timings of `fn()`."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(windows: list[np.ndarray], encode: Callable[[np.ndarray], bytes],
            decode: Callable[[bytes], np.ndarray]) -> tuple[float, float, float]:
    """(mean bytes per window, encode MB/s, decode MB/s), after checking the round trip."""
    payloads = [encode(w) for w in windows]
    for w, p in zip(windows, payloads):
        out = decode(p)
        assert out.dtype == w.dtype and out.tobytes() == w.tobytes(), "round trip is not bit-exact"
    mb = sum(w.nbytes for w in windows) / 1e6
    enc = best_seconds(lambda: [encode(w) for w in windows])
    dec = best_seconds(lambda: [decode(p) for p in payloads])
    return sum(map(len, payloads)) / len(payloads), mb / enc, mb / dec


def npy_rows(windows: list[np.ndarray], label: str) -> list[tuple[str, float, float, float]]:
    """Plain .npy and .npy + zstd (level 3, the writer's member compression)."""
    cctx, dctx = zstandard.ZstdCompressor(level=3, write_content_size=True), zstandard.ZstdDecompressor()
    rows = [(f"{label} npy", *measure(windows, npy.encode, npy.decode))]
    rows.append((f"{label} npy + zstd", *measure(
        windows, lambda w: cctx.compress(npy.encode(w)), lambda p: npy.decode(dctx.decompress(p)))))
    return rows


def chain_row(windows: list[np.ndarray], label: str, config: dict[str, Any]) -> tuple[str, float, float, float]:
    """One `ndarray` codec config."""
    codec = ArrayCodec.from_config(config)
    w = windows[0]
    field = FieldSpec("eeg", "eeg", "array", config, "nda", "generic", "0", dtype=w.dtype.str,
                      shape=w.shape, max_raw_bytes=w.nbytes)
    return (label, *measure(windows, codec.encode, codec.decoder(field)))


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--window", type=float, default=1.0, help="window length in seconds")
    parser.add_argument("--noise-uv", type=float, default=0.5, help="amplifier noise, uV rms")
    parser.add_argument("--alpha", type=float, default=1.0, help="background power ~ 1/f^alpha")
    parser.add_argument("--lowpass-hz", type=float, default=250.0, help="anti-aliasing low-pass; 0: none")
    args = parser.parse_args()
    counts = eeg_like(args.seconds, args.channels, args.rate, noise_uv=args.noise_uv,
                      lowpass_hz=args.lowpass_hz or None, alpha=args.alpha)
    step = int(args.window * args.rate)
    ints = [counts[i:i + step] for i in range(0, len(counts) - step + 1, step)]
    floats = [(w * np.float32(UV_PER_BIT * 1e-6)).astype("<f4") for w in ints]
    sig = signal_codec("<i2")
    shuffle_zstd = [{"id": "shuffle", "elementsize": 2}, {"id": "zstd", "level": 3}]
    rows = npy_rows(floats, "float32 (today)") + npy_rows(ints, "int16")
    rows += [
        chain_row(ints, "int16 signal_codec: F, delta+shuffle+zstd(3)", sig),
        chain_row(ints, "int16 C order, delta+shuffle+zstd(3)", {**sig, "order": "C"}),
        chain_row(ints, "int16 F, delta+zstd(3)", {**sig, "filters": [sig["filters"][0], sig["filters"][2]]}),
        chain_row(ints, "int16 F, shuffle+zstd(3)", {**sig, "filters": shuffle_zstd}),
        chain_row(ints, "int16 F, delta+shuffle+zstd(1)", signal_codec("<i2", level=1)),
        chain_row(ints, "int16 F, delta+shuffle+zstd(9)", signal_codec("<i2", level=9)),
        chain_row(ints, "int16 F, delta+shuffle+lz4", {**sig, "filters": [*sig["filters"][:2], {"id": "lz4"}]}),
        chain_row(ints, "int16 F, delta+shuffle+zlib(6)", {**sig, "filters": [*sig["filters"][:2], {"id": "zlib"}]}),
        chain_row(floats, "float32 signal_codec: F, delta(u4)+shuffle+zstd(3)", signal_codec("<f4")),
    ]
    base = rows[1][1]
    print(f"{len(ints)} windows of {step} samples x {args.channels} channels "
          f"({ints[0].nbytes} bytes int16, {floats[0].nbytes} bytes float32)")
    print(f"{'payload':52} {'bytes/window':>12} {'vs f32+zstd':>11} {'enc MB/s':>9} {'dec MB/s':>9}")
    for label, size, enc, dec in rows:
        print(f"{label:52} {size:12.0f} {size / base:11.2f} {enc:9.0f} {dec:9.0f}")


if __name__ == "__main__":
    main()
