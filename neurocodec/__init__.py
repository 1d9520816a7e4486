"""neurocodec: multi-modal neural recordings as WebDataset-style tar shards for PyTorch.

Everything a user of the library imports is here (the user guide's `neurocodec.datasets` gives
the same names); plugin authors import `neurocodec.plugin`, and their tests `neurocodec.testing`.
Every other module is internal and may move between releases.

Public names are imported lazily, so `import neurocodec` loads neither torch nor any plugin.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> the module that defines it. Grouped by what a user does; the errors last.
_EXPORTS = {
    # writing and converting
    "WebDatasetWriter": "neurocodec.dataset.writer",
    "create_shards_from_arrays": "neurocodec.dataset.writer",
    "merge_datasets": "neurocodec.dataset.merge",
    "NWBToWebDatasetConverter": "neurocodec.nwb.converter",
    "convert_legacy_shards": "neurocodec.dataset.legacy",
    "iter_legacy_samples": "neurocodec.dataset.legacy",
    # reading and inspecting
    "Dataset": "neurocodec.dataset.reader",
    "ShardedDatasetInfo": "neurocodec.dataset.info",
    "Vocabulary": "neurocodec.dataset.vocab",
    "make_split": "neurocodec.dataset.splits",
    "read_split": "neurocodec.dataset.splits",
    "refresh_splits": "neurocodec.dataset.splits",
    "append_datasets": "neurocodec.dataset.append",
    "compute_stats": "neurocodec.dataset.stats_compute",
    "read_stats": "neurocodec.dataset.stats",
    "Stats": "neurocodec.dataset.stats",
    "show_sample": "neurocodec.viz.figure",  # a picture of one sample (pip install 'neurocodec[plot]')
    # object storage
    "ShardCache": "neurocodec.storage.cache",
    "RetryPolicy": "neurocodec.storage.retry",
    # loading for training
    "WebDatasetLoader": "neurocodec.loader.datasets",
    "ResumableWebDatasetLoader": "neurocodec.loader.datasets",
    "RandomAccessWebDataset": "neurocodec.loader.datasets",
    "create_webdataset_dataloader": "neurocodec.loader.dataloader",
    "WebDatasetDataLoader": "neurocodec.loader.dataloader",
    "collate_webdataset": "neurocodec.loader.batch",
    "LoaderState": "neurocodec.loader.state",
    "EpochOrder": "neurocodec.loader.order",
    # per-sample transforms in the loaders' workers (`transform=`) and the built-in augmentations
    "sample_rng": "neurocodec.loader.transform",
    "UnitDropout": "neurocodec.transforms",
    "ChannelMask": "neurocodec.transforms",
    "SpikeTimeJitter": "neurocodec.transforms",
    "TimeCrop": "neurocodec.transforms",
    "Compose": "neurocodec.transforms",
    "Normalize": "neurocodec.transforms",
    "SpikeTokens": "neurocodec.plugin.tokens",
    # installed plugins (the `registry=` argument of the writer, readers and loaders)
    "load_registry": "neurocodec.plugin.manager",
    "default_registry": "neurocodec.plugin.manager",
    # every error a user may catch; all derive from NeurocodecError
    "NeurocodecError": "neurocodec.errors",
    "SampleError": "neurocodec.errors",
    "WriterClosedError": "neurocodec.errors",
    "DatasetError": "neurocodec.errors",
    "DatasetExistsError": "neurocodec.errors",
    "DatasetLockedError": "neurocodec.errors",
    "ShardError": "neurocodec.errors",
    "PluginError": "neurocodec.errors",
    "PluginLoadError": "neurocodec.errors",
    "DuplicateRegistrationError": "neurocodec.errors",
    "UnknownCodecError": "neurocodec.errors",
    "UnknownModalityError": "neurocodec.errors",
    "TransformError": "neurocodec.loader.transform",
    "NWBError": "neurocodec.nwb.extract",
    "ConversionError": "neurocodec.nwb.pool",
    "PickleNotAllowedError": "neurocodec.dataset.legacy",
    "ShowError": "neurocodec.viz.errors",
    "MissingExtraError": "neurocodec.viz.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562), so that `import neurocodec` stays cheap."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'neurocodec' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names (what `from neurocodec import *` gives)."""
    return list(__all__)
