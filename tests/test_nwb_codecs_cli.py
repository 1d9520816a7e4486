"""The converter's codec choice, as a user makes it: the neural codecs by default, `--codec npy`
for the interoperable layout, `--field-codec` for one field (video through FFV1), run as real
commands; what each stores is read from the manifest and the decoded values compared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import nwbfiles
from neurocodec import Dataset
from test_nwb_cli import neurocodec

FFV1 = '{"id": "av-video", "codec": "ffv1"}'


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Path:
    return nwbfiles.multirate_session(tmp_path_factory.mktemp("codecs") / "multi.nwb", seconds=6.0)


def convert(session: Path, out: Path, *flags: str):
    return neurocodec("convert", "--input", session, "--output", out, "--modalities", "spikes", "lfp", "video",
                      "--bin-size-ms", "100", "--sequence-length", "10", "--overlap", "0", "--no-progress", *flags)


def codecs_of(out: Path) -> tuple[dict[str, str], int]:
    doc = json.loads((out / ".neurocodec" / "dataset_metadata.json").read_text())
    return {f["name"]: f["codec"]["id"] for f in doc["fields"]}, doc["format_version"]


@pytest.fixture(scope="module")
def converted(session, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("out")
    runs = {"neural": (), "npy": ("--codec", "npy"), "ffv1": ("--field-codec", f"video={FFV1}")}
    for name, flags in runs.items():
        result = convert(session, root / name, *flags)
        assert result.returncode == 0, result.stderr
    return {name: root / name for name in runs}


def test_each_choice_stores_what_it_says(converted):
    assert codecs_of(converted["npy"]) == ({"lfp": "npy", "metadata": "json", "spikes": "npy",
                                            "spikes_observed": "npy", "video": "npy"}, 1)
    neural, version = codecs_of(converted["neural"])
    assert neural["spikes"] == "spike-events" and neural["spikes_observed"] == "spike-observed"
    assert neural["video"] == "npy" and version == 2  # video stays npy unless asked for
    assert codecs_of(converted["ffv1"])[0]["video"] == "av-video"
    doc = json.loads((converted["ffv1"] / ".neurocodec" / "dataset_metadata.json").read_text())
    assert doc["extra"]["conversion"]["field_codecs"] == {"video": json.loads(FFV1)}


def test_every_choice_decodes_to_the_same_values(converted):
    with Dataset(converted["npy"]) as reference:
        want = list(reference)
    for name in ("neural", "ffv1"):
        with Dataset(converted[name]) as ds:
            assert len(ds) == len(want)
            for a, b in zip(ds, want):
                for field in ("spikes", "spikes_observed", "lfp", "video"):
                    assert a[field].dtype == b[field].dtype and np.array_equal(a[field], b[field]), (name, field)


@pytest.mark.parametrize("flags, status, message", [
    (("--codec", "zip"), 2, "argument --codec: invalid choice: 'zip'"),
    (("--field-codec", "video=ffv1"), 1, "--field-codec 'video=ffv1': the config is not JSON"),
    (("--field-codec", 'video={"codec": "ffv1"}'), 1,
     "--field-codec takes FIELD=JSON with a JSON object holding a string"),
    (("--field-codec", 'video={"id": "nope"}'), 1, "codec 'nope' (field 'video') is not provided by any installed plugin"),
    (("--field-codec", f"video={FFV1}", "--field-codec", f"video={FFV1}"), 1, "--field-codec names 'video' twice"),
])
def test_bad_codec_flags_are_one_line_errors(session, tmp_path, flags, status, message):
    result = convert(session, tmp_path / "bad", *flags)
    assert result.returncode == status and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "bad" / ".neurocodec" / "dataset_metadata.json").exists()
