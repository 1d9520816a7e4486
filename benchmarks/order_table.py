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

Then a "manifest" row per dataset size (10^4, 10^5 and 10^6 shards of 1,000 samples, the last
one short so that the epoch stays within 9-digit keys; 10 shards with --quick): a
synthetic dataset (one real shard's fields, a manifest naming N shards that are not on disk),
its shard rows written once as a shard table (format version 3) and once as JSON rows (at 10^4
and 10^5 shards only; above the 8 MiB manifest cap, from 30,000 shards, the cap is lifted in
that child to measure what it would cost; 10^6 JSON rows, 282 MB, are not written: they took
23 s and 1.3 GB, see benchmarks/README.md). In a fresh process that has imported neurocodec's
loaders: `WebDatasetLoader(shuffle=True)` opened (its manifest read and checked), its
`Dataset` opened, the order of the epoch built and sought to a batch of 32 at 90%, each
sample's shard found (`Dataset.locate`) and its manifest entry made: time, and peak RSS over
the RSS before. The child checks each sample's entry holds it. `--skip-order` runs these rows
alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SHARD, BATCH, BUFFER = 1000, 32, 1000
FULL, QUICK = (10**7, 10**8, 10**9), (10**3, 10**4, 10**5)
STREAM = 100_000
MANIFEST_FULL, MANIFEST_QUICK = (10**4, 10**5, 10**6), (10,)
JSON_UP_TO = 10**5


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
    return _run_child({"samples": samples})


def _run_child(spec: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)  # this checkout's neurocodec, wherever run from
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                          capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parent, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {spec} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_dataset(base: Path, shards: int, rows: str) -> Path:
    """A dataset directory whose manifest names `shards` shards of SHARD samples (the last
    short, within 9-digit keys), its rows as a shard table (`rows="table"`) or JSON rows."""
    import numpy as np

    from neurocodec.dataset.writer import WebDatasetWriter
    from neurocodec.format import layout, limits, shard_table, shard_table_write

    path = base / f"{rows}-{shards}"
    with WebDatasetWriter(path, shard_size=1, fsync=False) as writer:
        writer.write_sample({"spikes": np.zeros((4, 2), dtype=np.int16)}, metadata={"i": 0})
    manifest = path / layout.MANIFEST_PATH
    doc = json.loads(manifest.read_text())
    for name in (doc["shards"][0]["name"], doc["shards"][0]["index"]):  # named again, by a manifest of other sizes
        (path / name).unlink()
    members = len(doc["fields"])
    samples = np.full(shards, SHARD, dtype=np.int64)
    samples[-1] = min(SHARD, layout.MAX_SAMPLES - SHARD * (shards - 1))
    starts = np.concatenate([[0], np.cumsum(samples)[:-1]])
    doc.update(total_samples=int(samples.sum()), total_shards=shards)
    sizes = {n: (limits.min_shard_bytes(n, members) + 4096, limits.index_file_bytes(n, members))
             for n in set(samples.tolist())}
    digests = np.random.default_rng(0).integers(0, 256, size=(shards, 2, 32), dtype=np.uint8)
    if rows == "table":
        records = np.zeros(shards, dtype=shard_table.RECORD)
        for n, (size, index) in sizes.items():
            records["bytes"][samples == n], records["index_bytes"][samples == n] = size, index
        records["sha256"], records["index_sha256"] = digests[:, 0], digests[:, 1]
        data, digest = shard_table_write.encode_columns(samples, starts, records.tobytes(), 0)
        name = shard_table.table_name(digest)
        (manifest.parent / name).write_bytes(data)
        doc.pop("shards")
        doc.update(format_version=shard_table.FORMAT_VERSION,
                   shard_table={"name": name, "bytes": len(data), "sha256": digest, "shards": shards})
    else:
        hexes = [(a.tobytes().hex(), b.tobytes().hex()) for a, b in digests]
        doc["shards"] = [{"name": layout.shard_name(i), "index": layout.index_name(layout.shard_name(i)),
                          "samples": int(n), "first_sample": int(f), "bytes": sizes[int(n)][0],
                          "sha256": hexes[i][0], "index_bytes": sizes[int(n)][1], "index_sha256": hexes[i][1]}
                         for i, (n, f) in enumerate(zip(samples.tolist(), starts.tolist()))]
    manifest.write_text(json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n")
    return path


def manifest_child(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: open the dataset at `spec['path']` with WebDatasetLoader, seek to 90%."""
    import numpy as np

    import neurocodec.dataset.reader as reader
    from neurocodec import WebDatasetLoader

    capped = Path(spec["path"], ".neurocodec", "dataset_metadata.json").stat().st_size > reader.MAX_MANIFEST_BYTES
    if capped:  # what old JSON rows would cost without the cap that refuses them
        import neurocodec.format.manifest as manifest

        reader.MAX_MANIFEST_BYTES = manifest.MAX_MANIFEST_BYTES = 1 << 40
    np.random.SeedSequence(0)
    before_kb = _status_kb("VmRSS")
    start = time.perf_counter()
    loader = WebDatasetLoader(spec["path"], shuffle=True, buffer_size=BUFFER, seed=0, batch_size=BATCH)
    opened = time.perf_counter()
    stream = loader.stream
    ds = stream.source.dataset
    total = len(ds)
    at = int(total * 0.9) // BATCH * BATCH
    ids = stream.order().ids(at, at + BATCH)
    entries = [ds.shards[ds.locate(int(i))[0]] for i in ids]
    done = time.perf_counter()
    ok = len(set(ids.tolist())) == BATCH and all(e.first_sample <= i < e.first_sample + e.samples
                                                  for e, i in zip(entries, ids.tolist()))
    return {"shards": len(ds.shards), "rows": spec["rows"], "samples": total, "cap_lifted": capped,
            "loader_s": opened - start, "open_seek_s": done - start, "peak_kb": _status_kb("VmHWM"),
            "before_kb": before_kb, "ok": ok}


def measure_manifests(sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    """A manifest row per size and layout (see the module documentation)."""
    rows = []
    base = Path(tempfile.mkdtemp(prefix="nc-manifest-"))
    try:
        for shards in sizes:
            for kind in ("json", "table") if shards <= JSON_UP_TO else ("table",):
                path = make_dataset(base, shards, kind)
                table = sum(p.stat().st_size for p in (path / ".neurocodec").iterdir())
                row = _run_child({"manifest": True, "path": str(path), "rows": kind})
                rows.append({**row, "manifest_bytes": table})
                shutil.rmtree(path)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return rows


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


def render_manifests(rows: list[dict[str, Any]]) -> str:
    """The markdown table of the manifest rows."""
    lines = ["", "manifest of a dataset at scale: WebDatasetLoader opened, its Dataset opened, the order sought "
             "to 90% and the batch's shard entries made; a fresh process per row", "",
             "| shards | samples | shard rows | manifest + table MB | loader open s | open + seek s "
             "| peak RSS MB | over baseline MB | check |", "|--:|--:|---|--:|--:|--:|--:|--:|---|"]
    for r in rows:
        kind = "JSON (cap lifted)" if r["cap_lifted"] else ("JSON" if r["rows"] == "json" else "table")
        lines.append(f"| {r['shards']:,} | {r['samples']:,} | {kind} | {r['manifest_bytes'] / 1e6:.1f} | "
                     f"{r['loader_s']:.3f} | {r['open_seek_s']:.3f} | {r['peak_kb'] / 1024:.0f} | "
                     f"{(r['peak_kb'] - r['before_kb']) / 1024:.1f} | {'ok' if r['ok'] else 'WRONG'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure every size, print (and with --json write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--samples", type=lambda s: [int(float(x)) for x in s.split(",")],
                        help="comma-separated sizes instead of 1e7,1e8,1e9")
    parser.add_argument("--shards", type=lambda s: tuple(int(float(x)) for x in s.split(",")),
                        help="comma-separated shard counts of the manifest rows instead of 1e4,1e5,1e6")
    parser.add_argument("--skip-order", action="store_true", help="only the manifest rows")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(manifest_child(spec) if spec.get("manifest") else child(spec)))
        return 0
    sizes = args.samples or (QUICK if args.quick else FULL)
    rows = [] if args.skip_order else [measure(n) for n in sizes]
    manifests = measure_manifests(args.shards or (MANIFEST_QUICK if args.quick else MANIFEST_FULL))
    command = "python benchmarks/order_table.py" + (" --quick" if args.quick else "")
    if rows:
        print(render(rows, command))
    print(render_manifests(manifests))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "manifest": manifests}, indent=1))
    return 0 if all(r["ok"] for r in rows + manifests) else 1


if __name__ == "__main__":
    sys.exit(main())
