"""Reading from an S3-protocol server on loopback next to reading from local disk (issues 6, 18).

    python benchmarks/remote.py                 # default sizes, prints one JSON object
    python benchmarks/remote.py --quick

`bench_remote_read()` writes one synthetic dataset to local disk and the same bytes to moto's
S3 server (run in its own process on 127.0.0.1, s3fs as the fsspec backend), then reads every
sample (a) from local disk, (b) from S3 with an empty shard cache (downloads included: the
"cold" number), once as before issue 18 (one download thread, whole files) and once with the
defaults (parallel downloads, ranged parts), and (c) from S3 again with the cache filled (the
"warm" number). The same through `WebDatasetLoader(shuffle=True)` and
`create_webdataset_dataloader` (2 workers), then on a dataset of 4 large shards (64 MB: 8 MiB
ranged parts), and the raw GET rate of moto through s3fs alone (no neurocodec), with 1 thread
and with `download_threads`: the ceiling of any empty-cache number here. Loopback answers at
once, where an object store takes tens of milliseconds to its first byte: the last rows repeat
the first dataset on a moto server that waits `latency` (20 ms) before answering each GET and
sends each answer at 100 MB/s per connection, as an object store's single stream would. Each number is the
best of `repeat` runs; the data read is checked against the local copy. moto is a Python server
sharing this machine's cores with the reader, so the cold numbers measure moto and loopback far
more than any real object store.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

BUCKET = "neurocodec-bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SERVER = """
import sys, time
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

host, port, latency, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
app = DomainDispatcherApplication(create_backend_app)


def paced(body):
    for chunk in body:
        for at in range(0, len(chunk), 1 << 18):
            piece = chunk[at:at + (1 << 18)]
            time.sleep(len(piece) / rate)
            yield piece


def slow(environ, start_response):
    if environ["REQUEST_METHOD"] != "GET":
        return app(environ, start_response)
    time.sleep(latency)  # before the answer's first byte, as an object store's latency
    body = app(environ, start_response)
    return paced(body) if rate else body  # and at most `rate` bytes/s per connection


run_simple(host, port, slow if latency or rate else app, threaded=True)
"""


class MotoProcess:
    """moto's S3 server in a child process on loopback (so it does not share our GIL); with
    `latency`, every GET waits that many seconds before it is answered, with `rate` (bytes/s)
    each answer is sent at most that fast."""

    def __init__(self, latency: float = 0.0, rate: float = 0.0) -> None:
        self.latency, self.rate = latency, rate
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "MotoProcess":
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, "127.0.0.1", str(self.port), str(self.latency),
                                      str(self.rate)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                req = urllib.request.Request(f"{self.endpoint}/{BUCKET}", method="PUT")
                urllib.request.urlopen(req, timeout=2).close()
                return self
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.__exit__()
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def options(self) -> dict[str, Any]:
        """s3fs storage options for this server."""
        return {"key": "bench", "secret": "bench", "endpoint_url": self.endpoint,
                "client_kwargs": {"region_name": "us-east-1"}}


def _sum(values: Any) -> float:
    return float(np.asarray(values, dtype=np.float64).sum())


def _read_all(path: Any, **kw: Any) -> tuple[float, float]:
    """(seconds, checksum) of reading every sample of the dataset at `path` in storage order."""
    from neurocodec.dataset.reader import Dataset

    start = time.perf_counter()
    total = 0.0
    with Dataset(path, **kw) as ds:
        for sample in ds:
            total += float(sample["lfp"][0, 0])
    return time.perf_counter() - start, total


def _read_loader(path: Any, **kw: Any) -> tuple[float, float]:
    """(seconds, checksum) of one shuffled epoch of `WebDatasetLoader`."""
    from neurocodec.loader.datasets import WebDatasetLoader

    start = time.perf_counter()
    total = sum(float(s["lfp"][0, 0]) for s in WebDatasetLoader(path, shuffle=True, buffer_size=256, seed=0, **kw))
    return time.perf_counter() - start, total


def _read_dataloader(path: Any, **kw: Any) -> tuple[float, float]:
    """(seconds, checksum) of one shuffled epoch of `create_webdataset_dataloader`, 2 workers,
    start-up included."""
    from neurocodec.loader.dataloader import create_webdataset_dataloader

    start = time.perf_counter()
    loader = create_webdataset_dataloader(path, batch_size=32, num_workers=2, shuffle=True, buffer_size=256,
                                          seed=0, **kw)
    total = sum(_sum(b["lfp"][:, 0, 0].numpy()) for b in loader)
    return time.perf_counter() - start, total


STREAM_RATE = 100e6
"""Bytes/s per connection of the slowed server (a single S3 GET stream delivers about this)."""
OLD = {"download_threads": 1, "part_bytes": 0}
"""The cache's settings before issue 18: one download thread, whole files."""
READERS = {"Dataset": _read_all, "WebDatasetLoader(shuffle=True)": _read_loader,
           "DataLoader (2 workers)": _read_dataloader}


def _raw_get(fs: Any, paths: list[str], size: int, threads: int, part: int) -> float:
    """MB/s of GETs of every object in `paths` (each `size` bytes) with s3fs alone, `threads`
    at once, in ranged GETs of `part` bytes."""
    from concurrent.futures import ThreadPoolExecutor

    ranges = [(p, a, min(size, a + part)) for p in paths for a in range(0, size, part)]
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        got = sum(pool.map(lambda r: len(fs.cat_file(r[0], start=r[1], end=r[2])), ranges))
    return got / (time.perf_counter() - start) / 1e6


class _Case:
    """One dataset on local disk and in moto, measured with each reader."""

    def __init__(self, root: Path, name: str, data: dict[str, np.ndarray], shard_size: int, server: MotoProcess,
                 part_bytes: int | None) -> None:
        from neurocodec.dataset.writer import create_shards_from_arrays

        self.root, self.server, self.options = root, server, server.options()
        self.local, self.url = root / name, f"s3://{BUCKET}/{name}"
        self.summary = create_shards_from_arrays(self.local, data, shard_size, progress=False, fsync=False,
                                                 overwrite=True)
        create_shards_from_arrays(self.url, data, shard_size, progress=False, storage_options=self.options,
                                  overwrite=True)
        self.want = _sum(data["lfp"][:, 0, 0])
        self.new = {} if part_bytes is None else {"part_bytes": part_bytes}
        self.seconds: dict[str, list[float]] = {}
        self.runs = 0

    def _cache(self, settings: dict[str, Any]) -> Any:
        from neurocodec.storage import ShardCache

        self.runs += 1
        folder = self.root / f"cache-{self.runs}"
        shutil.rmtree(folder, ignore_errors=True)
        return ShardCache(folder, 2 * self.summary["bytes"] + (1 << 20), **settings)

    def _time(self, key: str, read: Any, path: Any, **kw: Any) -> None:
        seconds, check = read(path, **kw)
        if not np.isclose(check, self.want, rtol=1e-9, atol=1e-6):
            raise AssertionError(f"{key}: checksum {check} != {self.want}")
        self.seconds.setdefault(key, []).append(seconds)

    def measure(self, readers: list[str]) -> None:
        """One run of every reader: local, empty cache before and now, filled cache."""
        s3 = {"storage_options": self.options}
        for name in readers:
            read = READERS[name]
            self._time(f"{name}|local", read, self.local)
            old = self._cache(OLD)
            self._time(f"{name}|empty, before", read, self.url, cache=old, **s3)
            shutil.rmtree(old.cache_dir, ignore_errors=True)
            new = self._cache(self.new)
            self._time(f"{name}|empty", read, self.url, cache=new, **s3)
            self._time(f"{name}|filled", read, self.url, cache=new, **s3)
            shutil.rmtree(new.cache_dir, ignore_errors=True)

    def raw(self, threads: int, part: int) -> float:
        """moto's raw GET rate for this dataset's shards (MB/s)."""
        import fsspec

        fs = fsspec.filesystem("s3", **self.options)
        shards = self.summary["shards"]
        size = min(os.path.getsize(self.local / f"shard_{n:06d}.tar") for n in range(shards))
        paths = [f"{BUCKET}/{self.url.split('/', 3)[3]}/shard_{n:06d}.tar" for n in range(shards)]
        return _raw_get(fs, paths, size, threads, part)

    def result(self, samples: int) -> dict[str, Any]:
        """Samples/s per reader and cache state (best run), and the empty/filled ratios."""
        rates = {key: samples / min(times) for key, times in self.seconds.items()}
        out: dict[str, Any] = {"samples_per_s": rates, "ratios": {}}
        for name in {key.split("|")[0] for key in rates}:
            filled = rates[f"{name}|filled"]
            out["ratios"][name] = {"empty / filled": rates[f"{name}|empty"] / filled,
                                   "empty before / filled": rates[f"{name}|empty, before"] / filled}
        return out


def bench_remote_read(samples: int = 2000, sample_shape: tuple[int, ...] = (32, 250), shard_size: int = 200,
                      repeat: int = 3, workdir: str | os.PathLike | None = None, quick: bool = False,
                      loaders: bool = True, big: bool = True, latency: float = 0.02) -> dict[str, Any]:
    """Samples/s reading one dataset from local disk and from moto's S3 server on loopback
    (cold: empty cache, downloads included, with the settings before issue 18 and now; warm:
    cache filled), per reader, on 4 large shards, and on a server answering each GET after
    `latency` s (0: not measured); moto's raw GET rate. Returns a JSON-ready
    dict; `local_samples_per_s`, `remote_cold_samples_per_s` and `remote_warm_samples_per_s`
    are `Dataset`'s numbers on the first dataset."""
    from neurocodec.storage.cache import DEFAULT_DOWNLOAD_THREADS, DEFAULT_PART_BYTES

    own = workdir is None
    root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="neurocodec-remote-bench-"))
    threads = DEFAULT_DOWNLOAD_THREADS
    try:
        rng = np.random.default_rng(0)
        with MotoProcess() as server:
            small = _Case(root, "small", {"lfp": rng.standard_normal((samples, *sample_shape)).astype(np.float32)},
                          shard_size, server, None)
            _read_all(small.local)  # page cache warm for the local reads
            readers = list(READERS) if loaders else ["Dataset"]
            raw = {"1 thread, whole shards": [], f"{threads} threads, whole shards": []}
            for _ in range(repeat):
                small.measure(readers)
                size = 1 << 40
                raw["1 thread, whole shards"].append(small.raw(1, size))
                raw[f"{threads} threads, whole shards"].append(small.raw(threads, size))
            result = {"samples": samples, "sample_shape": list(sample_shape), "shard_size": shard_size,
                      "shards": small.summary["shards"], "bytes": small.summary["bytes"], "repeat": repeat,
                      **small.result(samples), "raw_get_mb_per_s": {k: max(v) for k, v in raw.items()},
                      "download_threads": threads, "part_bytes": DEFAULT_PART_BYTES,
                      "server": "moto (S3 protocol) on 127.0.0.1, s3fs client"}
            rates = result["samples_per_s"]
            result.update(local_samples_per_s=rates["Dataset|local"], remote_cold_samples_per_s=rates["Dataset|empty"],
                          remote_warm_samples_per_s=rates["Dataset|filled"],
                          remote_cold_before_samples_per_s=rates["Dataset|empty, before"])
            if big:
                result["big"] = _big(root, server, rng, repeat, quick, threads)
        if latency:
            result["latency"] = _latency(root, rng, repeat, threads, latency, samples, sample_shape, shard_size)
        return result
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)


def _latency(root: Path, rng: np.random.Generator, repeat: int, threads: int, latency: float, samples: int,
             sample_shape: tuple[int, ...], shard_size: int) -> dict[str, Any]:
    """The first dataset's sizes on a moto server that waits `latency` s before answering each
    GET (an object store's time to first byte; loopback has none) and sends each answer at
    `STREAM_RATE` (an object store's rate per connection), read with `Dataset`."""
    with MotoProcess(latency, STREAM_RATE) as server:
        data = {"lfp": rng.standard_normal((samples, *sample_shape)).astype(np.float32)}
        case = _Case(root, "latency", data, shard_size, server, None)
        _read_all(case.local)
        raw = {"1 thread, whole shards": [], f"{threads} threads, whole shards": []}
        for _ in range(repeat):
            case.measure(["Dataset"])
            raw["1 thread, whole shards"].append(case.raw(1, 1 << 40))
            raw[f"{threads} threads, whole shards"].append(case.raw(threads, 1 << 40))
        shutil.rmtree(case.local, ignore_errors=True)
        return {"samples": samples, "sample_shape": list(sample_shape), "shard_size": shard_size,
                "shards": case.summary["shards"], "bytes": case.summary["bytes"], "latency_s": latency,
                "stream_mb_per_s": STREAM_RATE / 1e6,
                **case.result(samples), "raw_get_mb_per_s": {k: max(v) for k, v in raw.items()}}


def _big(root: Path, server: MotoProcess, rng: np.random.Generator, repeat: int, quick: bool,
         threads: int) -> dict[str, Any]:
    """4 shards of 64 MB (quick: 256 KB, 64 KiB parts) read with `Dataset`: ranged parts."""
    from neurocodec.storage.cache import DEFAULT_PART_BYTES

    shape, per_shard, part = ((8, 256), 32, 64 << 10) if quick else ((64, 1000), 256, DEFAULT_PART_BYTES)
    samples = 4 * per_shard
    case = _Case(root, "big", {"lfp": rng.standard_normal((samples, *shape)).astype(np.float32)}, per_shard,
                 server, part)
    _read_all(case.local)
    raw = {"1 thread, whole shards": [], f"{threads} threads, {part >> 10} KiB parts": []}
    for _ in range(repeat):
        case.measure(["Dataset"])
        raw["1 thread, whole shards"].append(case.raw(1, 1 << 40))
        raw[f"{threads} threads, {part >> 10} KiB parts"].append(case.raw(threads, part))
    shutil.rmtree(case.local, ignore_errors=True)
    return {"samples": samples, "sample_shape": list(shape), "shard_size": per_shard, "shards": 4,
            "bytes": case.summary["bytes"], "part_bytes": part, **case.result(samples),
            "raw_get_mb_per_s": {k: max(v) for k, v in raw.items()}}


def main(argv: list[str] | None = None) -> int:
    """Run `bench_remote_read` and print its result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-loaders", action="store_true", help="Dataset only (no WebDatasetLoader, DataLoader)")
    parser.add_argument("--no-big", action="store_true", help="skip the dataset of 4 shards of 64 MB")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds before each GET is answered "
                        "in the latency rows (0: skip them)")
    args = parser.parse_args(argv)
    kw = dict(loaders=not args.no_loaders, big=not args.no_big, latency=args.latency)
    if args.quick:
        result = bench_remote_read(samples=200, sample_shape=(8, 50), shard_size=50, repeat=1, quick=True, **kw)
    else:
        result = bench_remote_read(samples=args.samples, repeat=args.repeat, **kw)
    result["load_average"] = os.getloadavg()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
