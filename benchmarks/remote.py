"""Reading from an S3-protocol server on loopback next to reading from local disk (issue 6).

    python benchmarks/remote.py                 # default sizes, prints one JSON object
    python benchmarks/remote.py --quick

`bench_remote_read()` writes one synthetic dataset to local disk and the same bytes to moto's
S3 server (run in its own process on 127.0.0.1, s3fs as the fsspec backend), then reads every
sample (a) from local disk, (b) from S3 with an empty shard cache (downloads included: the
"cold" number) and (c) from S3 again with the cache filled (the "warm" number, which should be
close to local). Each number is the best of `repeat` runs and is samples per second; the data
read is checked against the local copy. moto is a Python server, so the cold number measures
this machine's loopback and moto far more than any real object store: it shows what the cache
costs and saves, not what S3 would deliver.
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


class MotoProcess:
    """moto's S3 server in a child process on loopback (so it does not share our GIL)."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "MotoProcess":
        code = "import sys; from moto.server import main; main(sys.argv[1:])"
        self.proc = subprocess.Popen([sys.executable, "-c", code, "-H", "127.0.0.1", "-p", str(self.port)],
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


def _read_all(path: Any, **kw: Any) -> tuple[float, float]:
    """(seconds, checksum) of reading every sample of the dataset at `path` in storage order."""
    from neurocodec.dataset.reader import Dataset

    start = time.perf_counter()
    total = 0.0
    with Dataset(path, **kw) as ds:
        for sample in ds:
            total += float(sample["lfp"][0, 0])
    return time.perf_counter() - start, total


def bench_remote_read(samples: int = 2000, sample_shape: tuple[int, ...] = (32, 250), shard_size: int = 200,
                      repeat: int = 3, workdir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Samples/s reading one dataset from local disk and from moto's S3 server on loopback
    (cold: empty cache, downloads included; warm: cache filled). Returns a JSON-ready dict with
    `local_samples_per_s`, `remote_cold_samples_per_s`, `remote_warm_samples_per_s`, the
    dataset's size and shard count, and the settings."""
    from neurocodec.storage import ShardCache
    from neurocodec.dataset.writer import create_shards_from_arrays

    own = workdir is None
    root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="neurocodec-remote-bench-"))
    try:
        rng = np.random.default_rng(0)
        data = {"lfp": rng.standard_normal((samples, *sample_shape)).astype(np.float32)}
        local = root / "local"
        summary = create_shards_from_arrays(local, data, shard_size, progress=False, fsync=False, overwrite=True)
        with MotoProcess() as server:
            url = f"s3://{BUCKET}/bench"
            options = server.options()
            create_shards_from_arrays(url, data, shard_size, progress=False, storage_options=options, overwrite=True)
            _read_all(local)  # page cache warm for the local reads
            want = float(data["lfp"][:, 0, 0].astype(np.float64).sum())
            local_s, cold_s, warm_s = [], [], []
            for i in range(repeat):
                seconds, check = _read_all(local)
                local_s.append(seconds)
                cache = ShardCache(root / f"cache-{i}", 2 * summary["bytes"] + (1 << 20))
                seconds, check_cold = _read_all(url, storage_options=options, cache=cache)
                cold_s.append(seconds)
                seconds, check_warm = _read_all(url, storage_options=options, cache=cache)
                warm_s.append(seconds)
                if not (np.isclose(check, want) and check == check_cold == check_warm):
                    raise AssertionError(f"checksums differ: local {check}, cold {check_cold}, warm {check_warm}")
        return {
            "samples": samples, "sample_shape": list(sample_shape), "shard_size": shard_size,
            "shards": summary["shards"], "bytes": summary["bytes"], "repeat": repeat,
            "local_samples_per_s": samples / min(local_s),
            "remote_cold_samples_per_s": samples / min(cold_s),
            "remote_warm_samples_per_s": samples / min(warm_s),
            "server": "moto (S3 protocol) on 127.0.0.1, s3fs client",
        }
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run `bench_remote_read` and print its result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if args.quick:
        result = bench_remote_read(samples=200, sample_shape=(8, 50), shard_size=50, repeat=1)
    else:
        result = bench_remote_read(samples=args.samples, repeat=args.repeat)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
