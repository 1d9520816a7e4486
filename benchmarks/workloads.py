"""The benchmark workloads: their shapes and sizes, the synthetic source data, and the checksum.

Source arrays are generated once per run (seeded, so every run builds the same bytes) and saved
as `.npy` files under the work directory; every writer process loads them fully into memory
before its clock starts. Metadata is a small dict per sample whose `trial` is the sample index.

The checksum proves that every library handed back the same data: each array is read whole as
unsigned 64-bit integers and summed (mod 2**64), which touches every byte and, being an integer
sum, does not depend on the order of samples or on how a library batches them. It is combined
with the count of samples and the sum of their `trial` numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

MASK = (1 << 64) - 1


@dataclass(frozen=True)
class Workload:
    """One dataset shape: float32 fields (name -> per-sample shape) and a sample count."""

    name: str
    fields: tuple[tuple[str, tuple[int, ...]], ...]
    samples: int
    description: str

    @property
    def field_names(self) -> tuple[str, ...]:
        """Array field names, in the order every adapter returns them."""
        return tuple(name for name, _ in self.fields)

    @property
    def array_bytes(self) -> int:
        """Bytes of array data in one sample (the payload that MB/s counts)."""
        return sum(4 * int(np.prod(shape)) for _, shape in self.fields)

    @property
    def shard_size(self) -> int:
        """Samples per shard or chunk for every library: ten shards per dataset."""
        return max(1, self.samples // 10)


SEED_FIELDS = (("behavior", (100, 2)), ("spikes", (100, 96)))
LFP_FIELDS = (("behavior", (100, 2)), ("lfp", (64, 1000)), ("spikes", (100, 96)))
TINY_FIELDS = (("behavior", (10, 2)), ("spikes", (10, 16)))


def workloads(quick: bool) -> dict[str, Workload]:
    """The workloads at full size (the issue's table) or at smoke-test size."""
    seed_n, lfp_n, tiny_n = (200, 40, 2000) if quick else (10_000, 2_000, 100_000)
    return {
        "seed": Workload("seed", SEED_FIELDS, seed_n, "spikes (100,96) f32 + behavior (100,2) f32 + metadata"),
        "lfp": Workload("lfp", LFP_FIELDS, lfp_n, "seed fields + lfp (64,1000) f32"),
        "tiny": Workload("tiny", TINY_FIELDS, tiny_n, "spikes (10,16) f32 + behavior (10,2) f32 + metadata"),
    }


def workload_from_dict(doc: Mapping[str, Any]) -> Workload:
    """Rebuild a Workload passed to a child process as JSON."""
    return Workload(doc["name"], tuple((n, tuple(s)) for n, s in doc["fields"]), doc["samples"], doc["description"])


def workload_to_dict(wl: Workload) -> dict[str, Any]:
    """JSON form of a Workload."""
    return {"name": wl.name, "fields": [[n, list(s)] for n, s in wl.fields], "samples": wl.samples,
            "description": wl.description}


def metadata(index: int) -> dict[str, Any]:
    """The metadata stored with sample `index`."""
    return {"subject": "mouse1", "session": "session0", "trial": index, "label": index % 4}


def generate_source(wl: Workload, directory: Path) -> None:
    """Write the workload's arrays to `directory/<field>.npy` (deterministic)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(12345)
    for name, shape in wl.fields:
        target = directory / f"{name}.npy"
        if target.exists():
            continue
        full = (wl.samples, *shape)
        if name == "spikes":
            array = rng.poisson(0.8, full).astype(np.float32)
        elif name == "behavior":
            array = np.cumsum(rng.standard_normal(full, dtype=np.float32), axis=1, dtype=np.float32)
        else:
            array = rng.standard_normal(full, dtype=np.float32)
        np.save(target, array)


def load_source(wl: Workload, directory: Path) -> dict[str, np.ndarray]:
    """The workload's arrays, read fully into memory."""
    return {name: np.load(directory / f"{name}.npy") for name in wl.field_names}


def digest(array: Any) -> int:
    """Sum of the array's bytes read as uint64 (uint32 when the size is not a multiple of 8)."""
    flat = np.ascontiguousarray(np.asarray(array)).reshape(-1)
    view = flat.view(np.uint64) if flat.nbytes % 8 == 0 else flat.view(np.uint32)
    return int(view.sum(dtype=np.uint64))


class Checksum:
    """Order-independent checksum of samples (or batches of samples)."""

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0
        self.trials = 0

    def add(self, arrays: Iterable[Any], trials: Iterable[int]) -> None:
        """Add one sample (or one batch: arrays with a leading batch axis and its trials)."""
        for array in arrays:
            self.sum = (self.sum + digest(array)) & MASK
        trials = [int(t) for t in trials]
        self.count += len(trials)
        self.trials += sum(trials)

    def value(self) -> str:
        """`count:digest:trial-sum`, equal for equal data."""
        return f"{self.count}:{self.sum:016x}:{self.trials}"


def expected_checksum(wl: Workload, directory: Path, indices: list[int] | None = None) -> str:
    """The checksum of the source data itself (of the samples at `indices` when given), which
    every reader must reproduce."""
    check = Checksum()
    data = load_source(wl, directory)
    chosen = range(wl.samples) if indices is None else indices
    for name in wl.field_names:
        # Digest per sample, as the readers do (a uint32 view differs from one uint64 view).
        for i in chosen:
            check.sum = (check.sum + digest(data[name][i])) & MASK
    check.count, check.trials = len(chosen), sum(chosen)
    return check.value()


def random_indices(wl: Workload, count: int, seed: int) -> list[int]:
    """`count` distinct sample indices (all of them when there are fewer) in a seeded random order."""
    import numpy as np

    return np.random.default_rng(seed).permutation(wl.samples)[:count].tolist()
