"""neurocodec: multi-modal neural recordings as WebDataset-style tar shards for PyTorch.

Public names are imported lazily, so `import neurocodec` loads neither torch nor any plugin.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "WebDatasetWriter": "neurocodec.writer",
    "create_shards_from_arrays": "neurocodec.writer",
    "ShardedDatasetInfo": "neurocodec.info",
    "Dataset": "neurocodec.format.reader",
    "ShardReader": "neurocodec.format.reader",
    "WebDatasetLoader": "neurocodec.loader.datasets",
    "ResumableWebDatasetLoader": "neurocodec.loader.datasets",
    "RandomAccessWebDataset": "neurocodec.loader.datasets",
    "create_webdataset_dataloader": "neurocodec.loader.dataloader",
    "WebDatasetDataLoader": "neurocodec.loader.dataloader",
    "collate_webdataset": "neurocodec.loader.batch",
    "LoaderState": "neurocodec.loader.state",
    "EpochOrder": "neurocodec.loader.order",
    "NWBToWebDatasetConverter": "neurocodec.nwb.converter",
    "hookimpl": "neurocodec.hookspecs",
    "ModalitySpec": "neurocodec.modality",
    "ArrayPolicy": "neurocodec.modality",
    "Codec": "neurocodec.codecs",
    "load_registry": "neurocodec.plugins",
    "default_registry": "neurocodec.plugins",
    "NeurocodecError": "neurocodec.errors",
    "ShardError": "neurocodec.errors",
    "SampleError": "neurocodec.errors",
    "DatasetError": "neurocodec.errors",
    "DatasetExistsError": "neurocodec.errors",
    "DatasetLockedError": "neurocodec.errors",
    "PluginError": "neurocodec.errors",
    "PluginLoadError": "neurocodec.errors",
    "DuplicateRegistrationError": "neurocodec.errors",
    "UnknownCodecError": "neurocodec.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'neurocodec' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
