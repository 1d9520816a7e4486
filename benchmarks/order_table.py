"""The cost of an epoch's order at scale (issue 18, point 5): building `EpochOrder` and seeking
it, per process, at 10^7, 10^8 and 10^9 samples.

Run: `python benchmarks/order_table.py [--quick] [--json out.json]`.

Every loader process (each rank, each DataLoader worker) builds the order of its epoch and
seeks to its position. Each row runs in a fresh interpreter that imports numpy and the order
module, makes the shard sizes (shards of 1,000 samples, as a numpy array: the input, not
counted), and then times `EpochOrder(sizes, seed=0, epoch=0, shuffle=True, buffer_size=1000)`
followed by the ids of one batch of 32 at 90% of the epoch (what resuming there does), and the
ids of one batch at a position in another block (a further seek), and then reads the ids of the
first `STREAM` positions (or all) batch after batch, as a worker does through an epoch (µs per
sample). Memory is the process's peak RSS (VmHWM) and that peak less the RSS just before the
build: what the order itself costs.
The child checks the batch: 32 distinct ids, all in the epoch. With --quick the sizes are
10^3, 10^4 and 10^5 (the smoke test). The exit status is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SHARD, BATCH, BUFFER = 1000, 32, 1000
FULL, QUICK = (10**7, 10**8, 10**9), (10**3, 10**4, 10**5)
STREAM = 100_000


def _status_kb(key: str) -> int:
    """A line of /proc/self/status in KiB (VmRSS, VmHWM); 0 where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: build the order of `spec['samples']` samples and seek it."""
    import numpy as np

    from neurocodec.loader.order import EpochOrder

    samples = spec["samples"]
    sizes = np.full(-(-samples // SHARD), SHARD, dtype=np.int64)
    sizes[-1] = samples - SHARD * (len(sizes) - 1)
    np.random.SeedSequence(0)  # numpy.random's lazy import is not the order's cost
    before_kb = _status_kb("VmRSS")
    start = time.perf_counter()
    order = EpochOrder(sizes, seed=0, epoch=0, shuffle=True, buffer_size=BUFFER)
    at = int(samples * 0.9) // BATCH * BATCH
    ids = order.ids(at, at + BATCH)
    built = time.perf_counter()
    other = order.ids(samples // 3, samples // 3 + BATCH)
    sought = time.perf_counter()
    streamed = min(samples, STREAM)
    for at in range(0, streamed, BATCH):
        order.ids(at, at + BATCH)
    per_sample = (time.perf_counter() - sought) / streamed
    ok = all(len(set(x.tolist())) == len(x) == BATCH and int(x.min()) >= 0 and int(x.max()) < samples
             for x in (ids, other))
    return {"samples": samples, "shards": len(sizes), "build_s": built - start, "seek_s": sought - built,
            "stream_us": per_sample * 1e6, "peak_kb": _status_kb("VmHWM"), "before_kb": before_kb, "ok": ok}


def measure(samples: int) -> dict[str, Any]:
    """`child` in a fresh interpreter (its peak memory is its own)."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps({"samples": samples})],
                          capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parent)
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {samples} samples failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def render(rows: list[dict[str, Any]], command: str) -> str:
    """The markdown table."""
    lines = [f"epoch order at scale — `{command}`",
             f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}; "
             f"shards of {SHARD:,} samples, shuffle, buffer_size {BUFFER}, seed 0; a fresh process per row",
             "", "| samples | shards | build + seek to 90% s | another seek s | µs per sample, in batches "
             "| peak RSS MB | order's own MB | check |", "|--:|--:|--:|--:|--:|--:|--:|---|"]
    for r in rows:
        lines.append(f"| {r['samples']:,} | {r['shards']:,} | {r['build_s']:.4f} | {r['seek_s']:.4f} | "
                     f"{r['stream_us']:.2f} | {r['peak_kb'] / 1024:.0f} | "
                     f"{(r['peak_kb'] - r['before_kb']) / 1024:.1f} | {'ok' if r['ok'] else 'WRONG'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure every size, print (and with --json write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--samples", type=lambda s: [int(float(x)) for x in s.split(",")],
                        help="comma-separated sizes instead of 1e7,1e8,1e9")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    sizes = args.samples or (QUICK if args.quick else FULL)
    rows = [measure(n) for n in sizes]
    command = "python benchmarks/order_table.py" + (" --quick" if args.quick else "")
    print(render(rows, command))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=1))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
