"""One adapter per library: its own writer, its own one-process reader, its own DataLoader.

Every adapter stores the same samples (the workload's float32 arrays plus a metadata dict) the
way its library's documentation shows, reads them back with that library's reader, and hands
the benchmark plain arrays, so the timing loop and the checksum are identical for everyone.
Libraries are imported inside the methods: a child process imports only the one it measures.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from workloads import Workload, load_source, metadata

Sample = tuple[list[Any], int]                 # arrays in workload field order, trial number
Batch = tuple[list[Any], list[int]]            # batched arrays (leading batch axis), trial numbers


class Library:
    """The operations the benchmark needs from a library (see the module documentation)."""

    name = ""
    module = ""
    resumable = False

    def version(self) -> str:
        """The installed version (imports the library)."""
        import importlib

        return str(getattr(importlib.import_module(self.module), "__version__", "?"))

    modules: tuple[str, ...] = ()

    def preload(self, loader: bool = False) -> None:
        """Import what the operations use, so no clock counts import time (torch too for loaders)."""
        import importlib

        for name in (self.module, *self.modules, *(("torch",) if loader else ())):
            importlib.import_module(name)

    def write(self, out: Path, wl: Workload, data: dict[str, np.ndarray], **options: Any) -> None:
        """Write every sample of `data` into a new dataset at `out`."""
        raise NotImplementedError

    def samples(self, path: Path, wl: Workload, **options: Any) -> Iterator[Sample]:
        """Every sample in stored order, read in this process. `options` are reader settings, taken
        only by adapters whose reader has them (neurocodec's `verify`); the others refuse any."""
        raise NotImplementedError

    def loader(self, path: Path, wl: Workload, *, batch_size: int, workers: int, seed: int,
               context: str | None = None) -> Any:
        """The library's DataLoader over `path`, shuffling, one epoch per iteration; workers started
        with the multiprocessing start method `context` (None: torch's default, fork on Linux)."""
        raise NotImplementedError

    apis: dict[str, str] = {}
    """The library's own datasets the benchmark reads one process through (`api_samples`): API
    name -> how it reads (`ordered`, `shuffled`, `random`)."""

    def api_samples(self, api: str, path: Path, wl: Workload, *, seed: int, scratch: Path,
                    indices: list[int] | None = None) -> Iterator[Sample]:
        """Every sample through the library's dataset `api` (a key of `apis`), as a user calls it:
        in stored order, shuffled by `seed`, or (random access) at `indices`, one by one."""
        raise NotImplementedError(f"{self.name} has no {api}")

    def batch(self, batch: Any, wl: Workload) -> Batch:
        """Arrays and trial numbers of one batch from `loader`."""
        raise NotImplementedError

    def state_dict(self, loader: Any) -> dict[str, Any]:
        """The loader's resumable state (JSON-ready)."""
        raise NotImplementedError(f"{self.name} has no loader state")

    def load_state_dict(self, loader: Any, state: dict[str, Any]) -> None:
        """Restore a state from `state_dict`."""
        raise NotImplementedError(f"{self.name} has no loader state")

    def seek_state(self, loader: Any, position: int) -> dict[str, Any] | None:
        """A state at sample `position` built without iterating, if the library documents one."""
        return None


class Neurocodec(Library):
    """neurocodec: WebDatasetWriter, Dataset, create_webdataset_dataloader."""

    name = "neurocodec"
    module = "neurocodec"
    modules = ("neurocodec.dataset.writer", "neurocodec.dataset.reader", "neurocodec.loader.dataloader")
    resumable = True

    def preload(self, loader: bool = False) -> None:
        """Also import the installed plugins' modules (imports only: the registry is still built
        inside the clock, by the first dataset opened)."""
        import importlib.metadata

        super().preload(loader)
        for ep in importlib.metadata.entry_points(group="neurocodec.plugins"):
            importlib.import_module(ep.module)

    def write(self, out: Path, wl: Workload, data: dict[str, np.ndarray], **options: Any) -> None:
        from neurocodec import WebDatasetWriter

        names = wl.field_names
        with WebDatasetWriter(out, shard_size=wl.shard_size, **options) as writer:
            for i in range(wl.samples):
                writer.write_sample({name: data[name][i] for name in names}, metadata=metadata(i))

    def samples(self, path: Path, wl: Workload, **options: Any) -> Iterator[Sample]:
        from neurocodec import Dataset

        names = wl.field_names
        with Dataset(path, **options) as ds:
            for s in ds:
                yield [s[name] for name in names], s["metadata"]["trial"]

    def loader(self, path: Path, wl: Workload, *, batch_size: int, workers: int, seed: int,
               context: str | None = None) -> Any:
        from neurocodec import create_webdataset_dataloader

        return create_webdataset_dataloader(path, batch_size=batch_size, num_workers=workers, shuffle=True,
                                            seed=seed, multiprocessing_context=context)

    apis = {"Dataset": "ordered", "WebDatasetLoader": "ordered", "ResumableWebDatasetLoader": "ordered",
            "WebDatasetLoader shuffle": "shuffled", "Dataset[i]": "random", "RandomAccessWebDataset[i]": "random"}

    def api_samples(self, api: str, path: Path, wl: Workload, *, seed: int, scratch: Path,
                    indices: list[int] | None = None) -> Iterator[Sample]:
        import neurocodec as nc

        names = wl.field_names
        if api == "Dataset":
            yield from self.samples(path, wl)
            return
        if api in ("Dataset[i]", "RandomAccessWebDataset[i]"):
            ds = nc.Dataset(path) if api == "Dataset[i]" else nc.RandomAccessWebDataset(path)
            tensors = api != "Dataset[i]"
            for i in indices or []:
                s = ds[i]
                yield [s[name].numpy() if tensors else s[name] for name in names], s["metadata"]["trial"]
            return
        if api == "ResumableWebDatasetLoader":  # checkpoints every 1000 samples (its default), fsynced
            loader = nc.ResumableWebDatasetLoader(path, scratch / "checkpoint.json", shuffle=False)
        else:
            loader = nc.WebDatasetLoader(path, shuffle=api.endswith("shuffle"), seed=seed)
        for s in loader:  # tensors: .numpy() is how a user gets the arrays back (no copy)
            yield [s[name].numpy() for name in names], s["metadata"]["trial"]

    def batch(self, batch: Any, wl: Workload) -> Batch:
        return [batch[name].numpy() for name in wl.field_names], [m["trial"] for m in batch["metadata"]]

    def state_dict(self, loader: Any) -> dict[str, Any]:
        return loader.state_dict()

    def load_state_dict(self, loader: Any, state: dict[str, Any]) -> None:
        loader.load_state_dict(state)

    def seek_state(self, loader: Any, position: int) -> dict[str, Any] | None:
        # The state is (epoch, position, order settings): a checkpoint at `position` is exactly this.
        return {**loader.state_dict(), "position": position}


class WebDataset(Library):
    """webdataset: ShardWriter, WebDataset(...).decode(), WebLoader (no resumable state)."""

    name = "webdataset"
    module = "webdataset"

    def write(self, out: Path, wl: Workload, data: dict[str, np.ndarray], **options: Any) -> None:
        import webdataset as wds

        out.mkdir(parents=True, exist_ok=True)
        names = wl.field_names
        with wds.ShardWriter(str(out / "shard-%06d.tar"), maxcount=wl.shard_size, verbose=0) as sink:
            for i in range(wl.samples):
                sample = {"__key__": f"sample{i:09d}", "metadata.json": metadata(i)}
                sample.update({f"{name}.npy": data[name][i] for name in names})
                sink.write(sample)

    @staticmethod
    def _urls(path: Path) -> list[str]:
        return sorted(glob.glob(str(path / "shard-*.tar")))

    def samples(self, path: Path, wl: Workload) -> Iterator[Sample]:
        import webdataset as wds

        keys = [f"{name}.npy" for name in wl.field_names]
        for s in wds.WebDataset(self._urls(path), shardshuffle=False).decode():
            yield [s[key] for key in keys], s["metadata.json"]["trial"]

    def loader(self, path: Path, wl: Workload, *, batch_size: int, workers: int, seed: int,
               context: str | None = None) -> Any:
        import webdataset as wds

        urls = self._urls(path)
        dataset = (wds.WebDataset(urls, shardshuffle=len(urls), seed=seed, workersplitter=wds.split_by_worker)
                   .shuffle(1000).decode().batched(batch_size, partial=True))
        return wds.WebLoader(dataset, batch_size=None, num_workers=workers,
                             multiprocessing_context=context if workers else None)

    apis = {"WebDataset": "ordered", "WebDataset shuffle": "shuffled"}

    def api_samples(self, api: str, path: Path, wl: Workload, *, seed: int, scratch: Path,
                    indices: list[int] | None = None) -> Iterator[Sample]:
        import webdataset as wds

        if api == "WebDataset":
            yield from self.samples(path, wl)
            return
        urls, keys = self._urls(path), [f"{name}.npy" for name in wl.field_names]
        for s in wds.WebDataset(urls, shardshuffle=len(urls), seed=seed).shuffle(1000).decode():
            yield [s[key] for key in keys], s["metadata.json"]["trial"]

    def batch(self, batch: Any, wl: Workload) -> Batch:
        return ([batch[f"{name}.npy"].numpy() for name in wl.field_names],
                [m["trial"] for m in batch["metadata.json"]])


_LITDATA_SOURCE: dict[str, np.ndarray] = {}


def _litdata_sample(i: int) -> dict[str, Any]:
    """litdata's `optimize` calls this in its worker (forked, so the source arrays are inherited)."""
    sample: dict[str, Any] = {name: array[i] for name, array in _LITDATA_SOURCE.items()}
    sample["metadata"] = metadata(i)
    return sample


class LitData(Library):
    """litdata: optimize, StreamingDataset, StreamingDataLoader (with state_dict)."""

    name = "litdata"
    module = "litdata"
    modules = ("litdata.processing.functions",)
    resumable = True

    def write(self, out: Path, wl: Workload, data: dict[str, np.ndarray], **options: Any) -> None:
        import litdata

        _LITDATA_SOURCE.clear()
        _LITDATA_SOURCE.update(data)
        # One worker, like the other writers; fork hands it the arrays already in memory.
        litdata.optimize(fn=_litdata_sample, inputs=list(range(wl.samples)), output_dir=str(out),
                         chunk_size=wl.shard_size, num_workers=1, start_method="fork", verbose=False)

    def samples(self, path: Path, wl: Workload) -> Iterator[Sample]:
        import litdata

        names = wl.field_names
        for s in litdata.StreamingDataset(str(path)):
            yield [s[name] for name in names], s["metadata"]["trial"]

    def loader(self, path: Path, wl: Workload, *, batch_size: int, workers: int, seed: int,
               context: str | None = None) -> Any:
        import litdata

        dataset = litdata.StreamingDataset(str(path), shuffle=True, seed=seed)
        return litdata.StreamingDataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                           multiprocessing_context=context if workers else None)

    apis = {"StreamingDataset": "ordered", "StreamingDataset shuffle": "shuffled", "StreamingDataset[i]": "random"}

    def api_samples(self, api: str, path: Path, wl: Workload, *, seed: int, scratch: Path,
                    indices: list[int] | None = None) -> Iterator[Sample]:
        import litdata

        names = wl.field_names
        dataset = litdata.StreamingDataset(str(path), shuffle=api.endswith("shuffle"), seed=seed)
        samples = (dataset[i] for i in indices or []) if api.endswith("[i]") else iter(dataset)
        for s in samples:
            yield [s[name] for name in names], s["metadata"]["trial"]

    def batch(self, batch: Any, wl: Workload) -> Batch:
        return [batch[name].numpy() for name in wl.field_names], [int(t) for t in batch["metadata"]["trial"]]

    def state_dict(self, loader: Any) -> dict[str, Any]:
        return loader.state_dict()

    def load_state_dict(self, loader: Any, state: dict[str, Any]) -> None:
        loader.load_state_dict(state)


class MosaicStreaming(Library):
    """MosaicML streaming: MDSWriter, StreamingDataset, StreamingDataLoader (with state_dict).

    Written from the library's documentation; on the CPU-torch machine the benchmark was built on
    `import streaming` fails (it imports torchvision), so this adapter is skipped there.
    """

    name = "mosaicml-streaming"
    module = "streaming"
    resumable = True

    def write(self, out: Path, wl: Workload, data: dict[str, np.ndarray], **options: Any) -> None:
        from streaming import MDSWriter

        columns = {name: "ndarray:float32:" + ",".join(map(str, shape)) for name, shape in wl.fields}
        columns["metadata"] = "json"
        size_limit = wl.shard_size * (wl.array_bytes + 256)
        with MDSWriter(out=str(out), columns=columns, size_limit=size_limit) as sink:
            for i in range(wl.samples):
                sample: dict[str, Any] = {name: data[name][i] for name in wl.field_names}
                sample["metadata"] = metadata(i)
                sink.write(sample)

    def samples(self, path: Path, wl: Workload) -> Iterator[Sample]:
        from streaming import StreamingDataset

        names = wl.field_names
        dataset = StreamingDataset(local=str(path), shuffle=False, batch_size=1)
        for s in dataset:
            yield [s[name] for name in names], s["metadata"]["trial"]

    def loader(self, path: Path, wl: Workload, *, batch_size: int, workers: int, seed: int,
               context: str | None = None) -> Any:
        from streaming import StreamingDataLoader, StreamingDataset

        dataset = StreamingDataset(local=str(path), shuffle=True, shuffle_seed=seed, batch_size=batch_size)
        return StreamingDataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                   multiprocessing_context=context if workers else None)

    def batch(self, batch: Any, wl: Workload) -> Batch:
        trials = batch["metadata"]["trial"]
        return [batch[name].numpy() for name in wl.field_names], [int(t) for t in trials]

    def state_dict(self, loader: Any) -> dict[str, Any]:
        return loader.state_dict()

    def load_state_dict(self, loader: Any, state: dict[str, Any]) -> None:
        loader.load_state_dict(state)


LIBRARIES: dict[str, Library] = {lib.name: lib for lib in (Neurocodec(), WebDataset(), LitData(), MosaicStreaming())}


def probe(name: str) -> dict[str, Any]:
    """Whether library `name` imports here: {"version": ...} or {"error": "<exception line>"}."""
    try:
        return {"version": LIBRARIES[name].version()}
    except Exception as exc:  # any import failure means "skipped", with its reason
        return {"error": f"{type(exc).__name__}: {exc}"}


def source(wl: Workload, directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """The workload's source arrays (see workloads.load_source)."""
    return load_source(wl, Path(directory))
