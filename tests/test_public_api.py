"""The curated public API: `neurocodec` exports what users use (every error they may catch
included), lazily; `neurocodec.plugin` is the whole plugin API; the docs import only from them."""

from __future__ import annotations

import ast
import importlib
import io
import json
import pickle
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

import neurocodec
import neurocodec.datasets
import neurocodec.plugin

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_MODULES = ("neurocodec", "neurocodec.plugin", "neurocodec.datasets", "neurocodec.testing")

# Exceptions the package defines that never reach a user: each is caught at the boundary that
# raises it and re-raised as a NeurocodecError naming the dataset, shard, sample or field.
WRAPPED_ERRORS = {
    "neurocodec.cli.options.CommandLineError": "main() prints it as the command's error message",
    "neurocodec.plugin.codecs.CodecError": "the writer wraps it in SampleError, the reader in ShardError",
    "neurocodec.format.compression.DecompressionError": "the shard reader wraps it in ShardError",
    "neurocodec.format.tar.HeaderError": "the shard and legacy readers wrap it in ShardError",
    "neurocodec.npy.NpyError": "codecs turn it into CodecError (then SampleError / ShardError)",
    "neurocodec.storage.retry.ChecksumMismatch": "retried; the cache wraps the last in ShardError",
    "neurocodec.storage.retry.RetriesExhausted": "the cache and outputs wrap it in ShardError / DatasetError",
    "neurocodec.storage.transfer.DownloadError": "the cache wraps it in ShardError naming the URL",
    "neurocodec.storage.transfer.RangesIgnored": "the download falls back to whole GETs",
    "neurocodec.storage.transfer.Cancelled": "only a prefetch's download is cancelled; the prefetcher drops it",
    "neurocodec.storage.cache.NoRoom": "only a prefetch must fit; the prefetcher drops it",
    "neurocodec.nwb.zarr_pickle.UnsafePickleError": "the NWB converter wraps it in NWBError naming the folder",
}


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)


def _package_modules() -> list[str]:
    """Every module of neurocodec and the built-in plugins (format/ is a namespace package, which
    pkgutil.walk_packages does not enter)."""
    names = []
    for root, package in ((ROOT / "neurocodec", "neurocodec"), (ROOT / "plugins", "neurocodec_plugins")):
        for path in sorted(root.rglob("*.py")):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            if parts[-1] != "__main__":
                names.append(".".join(parts))
    return names


def _defined_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class defined in neurocodec and its built-in plugins, by qualified name."""
    found = {}
    for name in _package_modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == name:
                found[f"{name}.{value.__qualname__}"] = value
    return found


# -- neurocodec ----------------------------------------------------------------------------------

def test_every_public_name_resolves_and_dir_lists_them():
    assert len(set(neurocodec.__all__)) == len(neurocodec.__all__)
    for name in neurocodec.__all__:
        assert getattr(neurocodec, name) is not None, name
    assert sorted(dir(neurocodec)) == sorted(neurocodec.__all__)
    namespace: dict = {}
    exec("from neurocodec import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(neurocodec.__all__)
    with pytest.raises(AttributeError, match="no attribute 'ShardReader'"):
        neurocodec.ShardReader  # noqa: B018 - internal: Dataset is the reader


def test_the_guide_module_gives_the_same_objects():
    assert neurocodec.datasets.__all__ == neurocodec.__all__
    assert sorted(dir(neurocodec.datasets)) == sorted(neurocodec.__all__)
    for name in neurocodec.__all__:
        assert getattr(neurocodec.datasets, name) is getattr(neurocodec, name), name
    with pytest.raises(AttributeError, match="neurocodec.datasets"):
        neurocodec.datasets.not_a_name  # noqa: B018


def test_import_and_catching_errors_load_no_torch_and_no_plugin():
    errors = [n for n in neurocodec.__all__ if n.endswith("Error")]
    code = f"""
import json, sys
import neurocodec
before = sorted(sys.modules)
from neurocodec import {", ".join(errors)}
print(json.dumps([before, sorted(sys.modules)]))
"""
    result = _run(code)
    assert result.returncode == 0, result.stderr
    before, after = json.loads(result.stdout)
    assert [m for m in before if m.startswith("neurocodec")] == ["neurocodec"]
    heavy = ("torch", "neurocodec_plugins", "pluggy", "pynwb", "h5py", "fsspec")
    assert [m for m in after if m.split(".")[0] in heavy] == []


def test_every_error_a_user_can_meet_is_exported():
    exported = {name: getattr(neurocodec, name) for name in neurocodec.__all__}
    exported_errors = {v for v in exported.values() if isinstance(v, type) and issubclass(v, BaseException)}
    assert all(issubclass(e, neurocodec.NeurocodecError) for e in exported_errors)
    defined = _defined_exceptions()
    assert set(WRAPPED_ERRORS) <= set(defined), "a listed internal error no longer exists: update the list"
    for qualname, exc in defined.items():
        if qualname in WRAPPED_ERRORS:
            continue
        assert issubclass(exc, neurocodec.NeurocodecError), (
            f"{qualname} is not a NeurocodecError: derive it from one, or list it in WRAPPED_ERRORS "
            "with the boundary that wraps it")
        assert exported.get(exc.__name__) is exc, f"{qualname} is not exported from neurocodec"


def test_exported_errors_are_the_ones_raised(tmp_path):
    from neurocodec import NeurocodecError, PickleNotAllowedError, WebDatasetWriter, WriterClosedError

    writer = WebDatasetWriter(tmp_path / "ds", shard_size=4)
    writer.write_sample({"spikes": np.zeros((3, 2), dtype=np.int64)})
    writer.finalize()
    with pytest.raises(WriterClosedError):
        writer.write_sample({"spikes": np.zeros((3, 2), dtype=np.int64)})

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    with tarfile.open(legacy / "shard_000000.tar", "w") as t:
        data = pickle.dumps([1, 2])
        info = tarfile.TarInfo("sample_000000001.spikes.pyd")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    with pytest.raises(PickleNotAllowedError) as caught:
        next(neurocodec.iter_legacy_samples(legacy))
    assert isinstance(caught.value, NeurocodecError)


# -- neurocodec.plugin ---------------------------------------------------------------------------

def test_plugin_api_resolves_and_holds_the_nwb_extractor_protocol():
    assert len(set(neurocodec.plugin.__all__)) == len(neurocodec.plugin.__all__)
    for name in neurocodec.plugin.__all__:
        assert getattr(neurocodec.plugin, name) is not None, name
    from neurocodec.plugin.manager import default_registry

    for modality in ("spikes", "lfp", "eeg", "behavior", "video", "fmri"):
        extractor = default_registry().nwb_extractor(modality)
        assert isinstance(extractor, neurocodec.plugin.NWBExtractor), modality
    assert issubclass(neurocodec.plugin.TimeSeriesReader, neurocodec.plugin.ModalityReader)
    options = neurocodec.plugin.ExtractOptions(path=Path("x.nwb"))
    assert options.series is None and options.nan_policy == "error"
    assert neurocodec.plugin.NWBError is neurocodec.NWBError


# -- the docs ------------------------------------------------------------------------------------

def _python_blocks() -> list[tuple[str, str]]:
    blocks = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for code in re.findall(r"```python\n(.*?)\n```", path.read_text(), flags=re.S):
            blocks.append((path.name, code))
    return blocks


def test_doc_code_blocks_import_only_public_modules():
    blocks = _python_blocks()
    assert len(blocks) >= 5
    seen = set()
    for where, code in blocks:
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] == "neurocodec":
                assert node.module in PUBLIC_MODULES, f"{where}: imports from {node.module}"
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert alias.name in module.__all__, f"{where}: {node.module}.{alias.name} is not public"
                    seen.add(alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] != "neurocodec" or alias.name in PUBLIC_MODULES, where
    assert {"ShardCache", "WebDatasetWriter", "hookimpl"} <= seen
