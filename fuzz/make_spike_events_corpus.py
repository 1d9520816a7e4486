"""Write the seed corpus of the `spike-events` fuzz target (fuzz/corpus/spike-events/).

Valid payloads of both codecs (30 kHz and 1 MHz clocks, ties, an empty window, steps with
remainders, observation intervals) under every decode mode, and hostile ones from the cases of
tests/test_codec_spike_events.py: truncated, counts that do not add up, a huge spike count, a
delta past the window, a remainder not below its step, a unit outside the count.

    python fuzz/make_spike_events_corpus.py
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from neurocodec.plugin import ObservedIntervals, SpikeEvents, SpikeEventsCodec, SpikeObservedCodec

OUT = Path(__file__).parent / "corpus" / "spike-events"


def seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    events, observed = SpikeEventsCodec(100, 10), SpikeObservedCodec(100, 10, "spikes")
    ticks = np.sort(rng.integers(0, 30_000, 120))
    ticks[:3] = [0, 0, 29_999]
    units = rng.integers(0, 5, 120)
    order = np.lexsort((units, ticks))
    clocked = SpikeEvents.from_ticks(ticks[order], units[order], 5, 30_000)
    micro = SpikeEvents.from_ticks(np.sort(rng.integers(0, 20_000, 60)) * 50 + (rng.random(60) < 0.1), np.zeros(60, int),
                                   1, 1_000_000)
    empty = SpikeEvents([], [], 3, 1000)
    mask = ObservedIntervals.from_ticks([[0, 15_000], [300, 30_000], [-5, 40_000]], [0, 1, 4], 5, 30_000)
    good = {"clocked": events.encode(clocked), "micro": events.encode(micro), "empty": events.encode(empty)}
    out = {f"valid-{name}-mode{mode}": bytes([mode]) + payload for name, payload in good.items() for mode in range(4)}
    out["valid-observed"] = bytes([4]) + observed.encode(mask)
    head = struct.Struct("<4sBBBBIIIII")
    bad = {
        "truncated": good["clocked"][:-7],  # 3 bytes short, CRC-32 made again
        "counts-do-not-add-up": good["clocked"][:head.size] + b"\xff" + good["clocked"][head.size + 1:-4],
        "huge-spike-count": head.pack(b"NCSE", 1, 4, 1, 0, 30_000, 30_000, 1, 2**32 - 1, 1) + b"\x01" + bytes(4),
        "delta-past-window": head.pack(b"NCSE", 1, 4, 1, 0, 30_000, 30_000, 1, 1, 1) + b"\x01" + struct.pack("<I", 30_000),
        "remainder-not-below-step": head.pack(b"NCSE", 1, 1, 1, 1, 30_000, 30_000, 1, 1, 100) + b"\x01\x00\x96",
        "observed-unit-out-of-range": head.pack(b"NCSO", 1, 4, 0, 0, 30_000, 30_000, 2, 1, 1)
        + struct.pack("<III", 9, 0, 10),
    }
    # hostile payloads get a right CRC-32 and a mode byte that keeps it (5 + mode), so the checks
    # behind the CRC are what they meet; "damaged" keeps a wrong one
    out.update({f"hostile-{name}": bytes([9 if name.startswith("observed") else 5]) + seal(payload)
                for name, payload in bad.items()})
    out["hostile-damaged"] = bytes([0]) + good["clocked"][:40] + bytes([good["clocked"][40] ^ 1]) + good["clocked"][41:]
    return out


def seal(body: bytes) -> bytes:
    """`body` and its CRC-32, as every payload ends."""
    return body + struct.pack("<I", zlib.crc32(body))


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (OUT / name).write_bytes(data)
    print(f"{len(seeds())} seeds in {OUT}")
