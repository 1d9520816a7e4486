"""A codec config that its codec rejects is an UnknownCodecError naming the manifest and field
(never a foreign exception from the plugin's constructor), in Python and on the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neurocodec.plugin.codecs import Codec
from neurocodec.errors import UnknownCodecError
from neurocodec.dataset.reader import Dataset
from neurocodec.plugin.manager import default_registry
from neurocodec.plugin.registry import PluginInfo, Registry
from neurocodec.dataset.writer import create_shards_from_arrays

MANIFEST = "/data/ds/dataset_metadata.json"


class Fussy(Codec):
    """A plugin codec whose constructor fails with a foreign exception type on a bad config."""

    codec_id, kind, extension = "fussy", "bytes", "bin"

    def __init__(self, level: int = 1) -> None:
        self.level = {1: "low", 2: "high"}[level]

    def encode(self, value):  # pragma: no cover - never called
        return bytes(value)

    def decode(self, data, field):  # pragma: no cover - never called
        return bytes(data)


def test_rejected_config_names_manifest_field_and_plugin():
    with pytest.raises(UnknownCodecError) as info:
        default_registry().codec({"id": "npy", "bogus": 1}, field="lfp", source=MANIFEST)
    text = str(info.value)
    assert text.startswith(f"{MANIFEST}: codec 'npy' (field 'lfp') of plugin 'generic' rejects its config")
    assert "bogus" in text


def test_a_plugin_constructor_failing_otherwise_is_still_the_library_error():
    registry = Registry()
    registry.add_codec(Fussy, PluginInfo("fussy", "neurocodec-fussy", "1.0", "fussy"))
    assert registry.codec({"id": "fussy", "level": 2}).level == "high"
    with pytest.raises(UnknownCodecError, match=rf"^{MANIFEST}: codec 'fussy' \(field 'raw'\) of plugin 'fussy' "
                                                r"rejects its config: KeyError: 7$"):
        registry.codec({"id": "fussy", "level": 7}, field="raw", source=MANIFEST)


def test_unknown_id_keeps_its_install_hint_after_the_source():
    with pytest.raises(UnknownCodecError, match=rf"^{MANIFEST}: codec 'nope' \(field 'x'\) is not provided .*"
                                                r"install the plugin that provides it: plugin 'p'"):
        default_registry().codec({"id": "nope"}, field="x", plugin_hint="plugin 'p'", source=MANIFEST)


@pytest.fixture
def bad_config_dataset(tmp_path) -> Path:
    out = tmp_path / "ds"
    create_shards_from_arrays(out, {"x": np.zeros((3, 2), dtype=np.float32)}, progress=False)
    doc = json.loads((out / ".neurocodec" / "dataset_metadata.json").read_text())
    field = next(f for f in doc["fields"] if f["name"] == "x")
    field["codec"]["bogus"] = 1
    (out / ".neurocodec" / "dataset_metadata.json").write_text(json.dumps(doc))
    return out


def test_dataset_with_a_rejected_config_names_the_field(bad_config_dataset):
    with pytest.raises(UnknownCodecError, match=r"codec 'npy' \(field 'x'\) of plugin 'generic' rejects"):
        Dataset(bad_config_dataset)


def test_cli_verify_names_the_dataset_and_the_field(bad_config_dataset):
    done = subprocess.run([sys.executable, "-m", "neurocodec", "verify", str(bad_config_dataset)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"neurocodec verify: error: {bad_config_dataset}")
    assert "codec 'npy' (field 'x')" in done.stderr
