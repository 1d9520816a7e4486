"""Video through a real codec (`av-video`, plugins/video_codec.py), with real PyAV and real shards.

Lossless FFV1 and PNG (and H.264 at crf 0 for gray frames) round-trip bit-exactly through
`WebDatasetWriter` and `Dataset`, gray and RGB(A), odd sizes, one frame or many; lossy H.264
keeps shape and dtype above a PSNR floor; a 2-worker DataLoader decodes in its workers; the
codec config is in the manifest; without PyAV, writing and reading say how to install it.
Hostile payloads are in tests/test_codec_video_hostile.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
import zstandard

import hostile as h
from neurocodec import Dataset, WebDatasetWriter, create_shards_from_arrays, create_webdataset_dataloader
from neurocodec.errors import NeurocodecError
from neurocodec.plugin import FieldSpec
from neurocodec.testing import check_codec
from neurocodec_plugins.video_codec import VideoCodec

LOSSLESS = ({"codec": "ffv1"}, {"codec": "png"}, {"codec": "ffvhuff"})
SHAPES = [(1, 1, 1), (1, 17, 23), (3, 31, 29), (2, 16, 16, 1), (3, 15, 13, 2), (4, 21, 19, 3), (2, 9, 11, 4),
          (60, 24, 32)]


def camera(frames: int, height: int, width: int, channels: int | None = None, seed: int = 0) -> np.ndarray:
    """Camera-like uint8 frames: a still textured background, a moving bright blob, sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    background = 90 + 40 * np.sin(x / 7.0) * np.cos(y / 11.0)
    out = []
    for t in range(frames):
        cy, cx = height / 2 + height / 4 * np.sin(t / 5), width / 2 + width / 4 * np.cos(t / 8)
        blob = 120 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (max(height, width) / 10) ** 2))
        image = background + blob
        if channels:
            image = image[..., None] * np.linspace(0.6, 1.0, channels)
        out.append(image + rng.normal(0, 2.0, image.shape))
    return np.clip(np.rint(np.stack(out)), 0, 255).astype(np.uint8)


def write(path: Path, values: list[np.ndarray], config: dict, **options) -> Path:
    """A dataset whose field `video` holds `values`, stored with the av-video codec `config`."""
    with WebDatasetWriter(path, shard_size=2, fsync=False, codecs={"video": {"id": "av-video", **config}},
                          **options) as w:
        for value in values:
            w.write_sample({"video": value})
    return path


def read(path: Path) -> list[np.ndarray]:
    """Every sample's `video` value, after verifying every shard."""
    with Dataset(path) as ds:
        ds.verify_all()
        return [np.array(ds[i]["video"]) for i in range(len(ds))]


def stored_payload(path: Path, sample: int = 0) -> bytes:
    """The stored bytes of sample `sample`'s video member (shard 0, uncompressed dataset)."""
    return h.read_members(path, 0)[h.member_position(path, 0, sample, "video")].payload


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of uint8 images."""
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.mark.parametrize("config,shape", [
    (config, shape) for config in LOSSLESS for shape in SHAPES
    if not (config["codec"] == "ffvhuff" and shape[3:] == (2,))  # refused: see test_writer_refuses_...
], ids=str)
def test_lossless_round_trip_is_bit_exact(tmp_path, rng, config, shape):
    channels = shape[3] if len(shape) == 4 else None
    values = [rng.integers(0, 256, shape, dtype=np.uint8), camera(*shape[:3], channels),
              np.zeros(shape, np.uint8), np.full(shape, 255, np.uint8)]
    got = read(write(tmp_path / "ds", values, config))
    for want, value in zip(values, got):
        assert value.dtype == np.uint8 and value.shape == shape
        np.testing.assert_array_equal(value, want)
    payload = stored_payload(tmp_path / "ds")
    assert payload[:4] == b"NCVF" and payload[5] == {"ffv1": 1, "png": 2, "ffvhuff": 4}[config["codec"]]


@pytest.mark.parametrize("config", LOSSLESS, ids=lambda c: c["codec"])
def test_frame_count_may_vary_between_samples(tmp_path, config):
    values = [camera(1, 20, 30, seed=1), camera(45, 20, 30, seed=2), camera(7, 20, 30, seed=3)]
    path = write(tmp_path / "ds", values, config)
    field = h.load_manifest(path)["fields"][0]
    assert field["shape"] == [None, 20, 30]
    for want, value in zip(values, read(path)):
        np.testing.assert_array_equal(value, want)


@pytest.mark.parametrize("config", [*LOSSLESS, {"codec": "h264", "crf": 0}], ids=lambda c: c["codec"])
def test_check_codec_from_bytes_and_memoryview_deterministic(config):
    """neurocodec.testing.check_codec, as a plugin author runs it: config round trip, the same
    bytes twice, bit-exact from bytes and from a memoryview, against fields with free axes."""
    values = [camera(4, 9, 13, seed=1), camera(1, 9, 13, seed=2)]
    field = FieldSpec(name="video", modality="video", kind="array", codec=config, extension="ncv", plugin="video",
                      plugin_version="", dtype="|u1", shape=(None, None, None), max_value_bytes=1 << 16)
    check_codec(VideoCodec(**config), values, field)
    if config["codec"] != "h264":
        rgba = [camera(3, 7, 5, 4, seed=3)]
        check_codec(VideoCodec(**config), rgba, attrs.evolve(field, shape=(None, 7, 5, 4)))


@pytest.mark.parametrize("compression", ["zstd", "xz"])
def test_round_trip_under_member_compression(tmp_path, compression):
    values = [camera(5, 16, 18, 3, seed=s) for s in range(3)]
    got = read(write(tmp_path / "ds", values, {"codec": "ffv1"}, compression=compression))
    for want, value in zip(values, got):
        np.testing.assert_array_equal(value, want)


def test_h264_at_crf_0_is_lossless_for_gray_frames(tmp_path):
    values = [camera(30, 33, 47), camera(1, 8, 8)[..., None]]
    path = write(tmp_path / "ds", values[:1], {"codec": "h264", "crf": 0})
    np.testing.assert_array_equal(read(path)[0], values[0])
    path = write(tmp_path / "ds1", values[1:], {"codec": "h264", "crf": 0})
    np.testing.assert_array_equal(read(path)[0], values[1])


@pytest.mark.parametrize("channels", [None, 1, 3])
def test_h264_is_lossy_but_close_and_much_smaller(tmp_path, channels):
    values = [camera(45, 64, 64, channels, seed=s) for s in range(2)]
    path = write(tmp_path / "ds", values, {"codec": "h264", "crf": 23})
    for want, value in zip(values, read(path)):
        assert value.dtype == np.uint8 and value.shape == want.shape
        assert psnr(value, want) > 30, psnr(value, want)
    zstd = len(zstandard.ZstdCompressor(level=3).compress(h.npy_bytes(values[0])))
    assert len(stored_payload(path)) * 10 < zstd


def test_manifest_records_codec_config_and_value_size(tmp_path):
    values = [camera(10, 12, 14, 3)]
    path = write(tmp_path / "ds", values, {"codec": "h264", "crf": 30, "preset": "fast"})
    field = h.load_manifest(path)["fields"][0]
    assert field["codec"] == {"id": "av-video", "codec": "h264", "crf": 30, "preset": "fast"}
    assert field["extension"] == "ncv" and field["dtype"] == "|u1" and field["shape"] == [10, 12, 14, 3]
    assert field["max_value_bytes"] == values[0].nbytes
    path = write(tmp_path / "ds1", values, {})
    assert h.load_manifest(path)["fields"][0]["codec"] == {"id": "av-video", "codec": "ffv1"}


def test_create_shards_from_arrays_takes_the_codec(tmp_path):
    frames = np.stack([camera(9, 10, 12, 3, seed=s) for s in range(5)])
    create_shards_from_arrays(tmp_path / "ds", {"video": frames}, shard_size=2, fsync=False,
                              codecs={"video": {"id": "av-video", "codec": "png"}})
    assert h.load_manifest(tmp_path / "ds")["fields"][0]["codec"] == {"id": "av-video", "codec": "png"}
    np.testing.assert_array_equal(np.stack(read(tmp_path / "ds")), frames)


@pytest.mark.parametrize("config,match", [
    ({"codec": "mpeg4"}, r"'mpeg4' is not one of ffv1, png, h264, ffvhuff"),
    ({"codec": "ffv1", "crf": 10}, r"crf and preset are options of h264"),
    ({"codec": "h264", "crf": 52}, r"crf must be an integer from 0 to 51"),
    ({"codec": "h264", "preset": "placebo; rm"}, r"preset must be one of"),
    ({"codec": "png", "level": 3}, r"does not take config"),
])
def test_writer_refuses_a_bad_codec_config(tmp_path, config, match):
    with pytest.raises(NeurocodecError, match=match):
        write(tmp_path / "ds", [camera(2, 4, 4)], config)


@pytest.mark.parametrize("codec,channels,match", [
    ("h264", 2, r"h264 stores frames of \[1, 3\] channels, not 2"),
    ("h264", 4, r"h264 stores frames of \[1, 3\] channels, not 4"),
    ("ffvhuff", 2, r"ffvhuff stores frames of \[1, 3, 4\] channels, not 2"),
    ("ffv1", 5, r"ffv1 stores frames of \[1, 2, 3, 4\] channels, not 5"),
])
def test_writer_refuses_frames_the_codec_cannot_store(tmp_path, codec, channels, match):
    with pytest.raises(NeurocodecError, match=match):
        write(tmp_path / "ds", [camera(2, 4, 4, channels)], {"codec": codec})


@pytest.mark.multiprocess
def test_two_worker_dataloader_decodes_in_its_workers(tmp_path):
    values = [camera(12, 20, 22, 3, seed=s) for s in range(8)]
    path = write(tmp_path / "ds", values, {"codec": "ffv1"})
    loader = create_webdataset_dataloader(path, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    got = torch.cat([b["video"] for b in batches]).numpy()
    assert got.dtype == np.uint8 and got.shape == (8, 12, 20, 22, 3)
    np.testing.assert_array_equal(got, np.stack(values))


WITHOUT_AV = textwrap.dedent("""
    import json, sys
    sys.modules["av"] = None  # this interpreter has no PyAV: `import av` raises ImportError
    import numpy as np
    from neurocodec import Dataset, WebDatasetWriter
    out = {}
    try:
        with WebDatasetWriter(sys.argv[1], codecs={"video": {"id": "av-video"}}) as w:
            w.write_sample({"video": np.zeros((2, 4, 4), np.uint8)})
    except Exception as exc:
        out["write"] = [type(exc).__name__, [c.__name__ for c in type(exc).__mro__], str(exc)]
    try:
        Dataset(sys.argv[2])
    except Exception as exc:
        out["read"] = [type(exc).__name__, [c.__name__ for c in type(exc).__mro__], str(exc)]
    with WebDatasetWriter(sys.argv[3]) as w:  # video as plain npy needs no PyAV
        w.write_sample({"video": np.ones((2, 4, 4), np.uint8)})
    with Dataset(sys.argv[3]) as ds:
        out["plain"] = int(ds[0]["video"].sum())
    print(json.dumps(out))
""")


def test_without_pyav_writing_and_reading_say_how_to_install_it(tmp_path):
    written = write(tmp_path / "ds", [camera(3, 8, 8)], {"codec": "ffv1"})
    args = [str(tmp_path / "new"), str(written), str(tmp_path / "npy")]
    proc = subprocess.run([sys.executable, "-c", WITHOUT_AV, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    for action in ("write", "read"):
        name, mro, message = report[action]
        assert "NeurocodecError" in mro, report
        assert "pip install neurocodec[video]" in message and "av-video" in message, report
    assert report["plain"] == 32 and "Traceback" not in proc.stderr
