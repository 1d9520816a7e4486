"""Pictures of samples (issue 17, point 4): `neurocodec.show_sample` and `neurocodec show`.

Every built-in modality is drawn from real datasets written by neurocodec: a writer's dataset
with one field of each modality (one of them under another name, mapped to its modality), and an
NWB session converted with the neural codecs (spike events with observation intervals, an LFP of
scaled integers in volts, behavior). The figures are inspected (panels, titles, shared time
limits, what each panel drew, checked against the arrays and the NWB file read with h5py) and
rendered (each panel's pixels are not one flat colour); the command writes a PNG whose header
is checked byte by byte.
"""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("matplotlib")

from neurocodec import (  # noqa: E402
    Dataset, NWBToWebDatasetConverter, ShowError, WebDatasetWriter, show_sample,
)
from neurocodec.cli import main  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_window_loader import rich_session  # noqa: E402

SAMPLES = 3
OBSERVED_FROM = 20  # unit 2 of the counts is not observed in bins 0..19


def sample_values(i: int) -> dict:
    rng = np.random.default_rng(i)
    t = np.arange(200) / 200
    yy, xx = np.mgrid[:24, :32]
    volumes = rng.random((5, 10, 12, 8)).astype(np.float32)
    volumes[:, 3:7, 4:8, 2:6] += 2.0
    observed = np.ones((50, 5), bool)
    observed[:OBSERVED_FROM, 2] = False
    return {
        "eeg": (np.sin(2 * np.pi * 10 * t)[:, None] * 20 + rng.normal(0, 5, (200, 8))).astype(np.float32),
        "calcium": np.cumsum(rng.normal(0, 0.05, (30, 6)), 0).astype(np.float32),
        "video": np.stack([((xx + yy + 3 * k) % 32 * 8).astype(np.uint8) for k in range(10)]),
        "fmri": volumes,
        "spikes": rng.poisson(1.0, (50, 5)).astype(np.int32),
        "spikes_observed": observed,
        "pupil": rng.random((60, 2)).astype(np.float32),
        "other": rng.random((40, 3, 2)).astype(np.float32),
        "label": "trial",
    }


@pytest.fixture(scope="module")
def arrays(tmp_path_factory) -> Path:
    """Every modality by the writer ("pupil" is behavior by the modalities mapping), with metadata."""
    path = tmp_path_factory.mktemp("show") / "arrays"
    with WebDatasetWriter(path, 2, modalities={"pupil": "behavior"}, fsync=False) as writer:
        for i in range(SAMPLES):
            writer.write_sample(sample_values(i), metadata={"session": "s1", "subject_id": "m7",
                                                             "start_time": 10.0 + i, "stop_time": 11.0 + i})
    return path


@pytest.fixture(scope="module")
def neural(tmp_path_factory) -> tuple[Path, Path]:
    """(an NWB session, its conversion in 0.5 s chunks with spike events and scaled integers)."""
    root = tmp_path_factory.mktemp("show-nwb")
    nwb = rich_session(root / "rich.nwb", t0=0.0, seconds=2.0, seed=1)
    with NWBToWebDatasetConverter(root / "chunks", 4, ["spikes", "lfp", "behavior"], 10.0, chunk_seconds=0.5,
                                  progress=False, fsync=False) as converter:
        converter.convert_nwb_files([nwb])
        converter.finalize()
    return nwb, root / "chunks"


def rendered(fig) -> np.ndarray:
    """The figure's pixels (RGB)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3]


def assert_every_panel_drew(fig) -> None:
    pixels = rendered(fig)
    height = pixels.shape[0]
    for ax in fig.axes:
        box = ax.get_window_extent()
        crop = pixels[height - int(box.y1):height - int(box.y0), int(box.x0):int(box.x1)].astype(np.int32)
        colours = np.unique((crop[..., 0] << 16) | (crop[..., 1] << 8) | crop[..., 2])
        assert len(colours) > 2, f"panel {ax.get_label()} is flat"


def panel(fig, label: str):
    [ax] = [ax for ax in fig.axes if ax.get_label() == label]
    return ax


def test_every_writer_modality_gets_its_panel(arrays):
    fig = show_sample(arrays, 1, dpi=50)
    assert [ax.get_label() for ax in fig.axes] == [
        "calcium:calcium", "traces:eeg", "slices:fmri", "heatmap:other", "lines:pupil", "counts:spikes",
        "frames:video"]
    for ax in fig.axes:
        assert ax.get_xlim() == (11.0, 12.0)
        assert ax.get_title(loc="left").startswith(ax.get_label().split(":")[1])
    assert fig.axes[-1].get_xlabel() == "time (s)"
    title = fig._suptitle.get_text()
    assert "session s1" in title and "subject m7" in title and "11.000–12.000 s" in title
    assert "arrays · sample_000000002" in title
    assert "not drawn (no time axis): label" in [t.get_text() for t in fig.texts]
    assert_every_panel_drew(fig)


def test_panels_draw_the_values(arrays):
    values = sample_values(1)
    fig = show_sample(arrays, 1)
    counts = panel(fig, "counts:spikes").images[0].get_array()
    assert np.array_equal(counts.data, values["spikes"].T)
    assert np.array_equal(counts.mask, ~values["spikes_observed"].T)  # unobserved bins greyed
    eeg = panel(fig, "traces:eeg")
    drawn = np.stack([line.get_ydata() for line in eeg.lines[:8]], axis=1)
    assert np.allclose(drawn - np.median(drawn, axis=0), values["eeg"] - np.median(values["eeg"], axis=0), atol=1e-4)
    assert np.allclose(eeg.lines[0].get_xdata(), 11.0 + np.arange(200) / 200)
    assert any(t.get_text().endswith("a.u.") for t in eeg.texts)  # the writer records no unit
    pupil = panel(fig, "lines:pupil")
    assert [t.get_text() for t in pupil.get_legend().get_texts()] == ["pupil[0]", "pupil[1]"]
    assert np.array_equal(pupil.lines[1].get_ydata(), values["pupil"][:, 1])
    assert panel(fig, "heatmap:other").images[0].get_array().shape == (6, 40)
    frames = panel(fig, "frames:video")
    shown = [image.get_array() for image in frames.images]
    times = [float(t.get_text().split()[0]) for t in frames.texts]
    assert 2 <= len(shown) <= 10 and len(times) == len(shown)
    for frame, time in zip(shown, times):  # each frame is the one of its time (10 frames over 1 s)
        assert np.array_equal(frame, values["video"][round((time - 11.0) * 10)])
    slices = panel(fig, "slices:fmri")
    first = values["fmri"][round((float(slices.texts[0].get_text().split()[0]) - 11.0) * 5)]  # 5 volumes over 1 s
    montage = slices.images[0].get_array()  # sagittal (z up, y across), coronal, axial, NaN between
    assert np.array_equal(montage[:8, :12], first[5, :, :].T) and montage.mask[:, 12].all()
    assert np.array_equal(montage[:8, 13:23], first[:, 6, :].T)
    assert np.array_equal(montage[:12, 24:34], first[:, :, 4].T)


def test_spike_events_draw_a_raster_of_the_nwb_spikes(neural):
    nwb, chunks = neural
    fig = show_sample(chunks, 1, dpi=50)
    assert [ax.get_label() for ax in fig.axes] == ["lines:behavior", "traces:lfp", "raster:spikes"]
    assert all(ax.get_xlim() == (0.5, 1.0) for ax in fig.axes)
    assert "session rich" in fig._suptitle.get_text() and "subject rat1" in fig._suptitle.get_text()
    assert "0.500–1.000 s" in fig._suptitle.get_text()
    raster = panel(fig, "raster:spikes")
    segments = raster.collections[0].get_segments()
    drawn = np.array(sorted((float(s[0, 0]), round(float(s[:, 1].mean()))) for s in segments))
    with h5py.File(nwb) as f:
        times, ends = f["units/spike_times"][:], f["units/spike_times_index"][:]
        lfp = f["processing/ecephys/LFP/lfp/data"][250:500] * 2.5e-6 * f["processing/ecephys/LFP/lfp/channel_conversion"][:]
    expected = np.array(sorted((float(t), u) for u, (a, z) in enumerate(zip([0, *ends[:-1]], ends))
                               for t in times[a:z] if 0.5 <= t < 1.0))
    assert drawn.shape == expected.shape and len(drawn) > 10
    assert np.allclose(drawn[:, 0], expected[:, 0], atol=1e-6, rtol=0)  # stored in 1 µs ticks
    assert np.array_equal(drawn[:, 1], expected[:, 1])
    assert len(raster.images) == 1  # unit 1 is observed only from 0.72 s: grey before
    trace = panel(fig, "traces:lfp")
    millivolts = np.stack([line.get_ydata() for line in trace.lines[:4]], axis=1)
    assert np.allclose(millivolts - np.median(millivolts, axis=0), 1e3 * (lfp - np.median(lfp, axis=0)), atol=1e-4)
    assert any(t.get_text().endswith("mV") for t in trace.texts)  # volts in the manifest, drawn in mV
    assert [t.get_text() for t in panel(fig, "lines:behavior").get_legend().get_texts()] == ["speed[0]", "speed[1]"]
    assert_every_panel_drew(fig)


def test_spike_events_as_counts_and_load_time_windows(neural):
    _, chunks = neural
    fig = show_sample(chunks, 1, raster=False)
    with Dataset(chunks) as ds:
        counts, observed = ds[1]["spikes"], ds[1]["spikes_observed"]
    image = panel(fig, "counts:spikes").images[0].get_array()
    assert np.array_equal(image.data, counts.T) and np.array_equal(image.mask, ~observed.T)
    window = show_sample(chunks, 2, window_ms=250, fields=["spikes"])
    assert [ax.get_label() for ax in window.axes] == ["raster:spikes"]
    assert window.axes[0].get_xlim() == (0.5, 0.75)
    assert "window 2 of the 250 ms grid" in window._suptitle.get_text()


def test_key_an_open_dataset_and_a_given_figure(arrays):
    from matplotlib.figure import Figure

    given = Figure()
    with Dataset(arrays) as ds:
        fig = show_sample(ds, key="sample_000000003", fields=["pupil"], fig=given)
    assert fig is given and [ax.get_label() for ax in fig.axes] == ["lines:pupil"]
    assert fig.axes[0].get_xlim() == (12.0, 13.0)
    with pytest.raises(ShowError, match=r"index=3 is out of range: arrays holds 3 samples \(0 to 2\)"):
        show_sample(arrays, 3)
    with pytest.raises(ShowError, match="key='sample_1' is not a sample of arrays"):
        show_sample(arrays, key="sample_1")
    with pytest.raises(ShowError, match="fields='lfp' is not a field of arrays"):
        show_sample(arrays, fields=["lfp"])


def test_a_sample_without_times_is_drawn_over_the_window_as_a_fraction(tmp_path):
    with WebDatasetWriter(tmp_path / "bare", 2, fsync=False) as writer:
        writer.write_sample({"spikes": np.eye(4, dtype=np.int32)})
    fig = show_sample(tmp_path / "bare")
    assert fig.axes[0].get_xlim() == (0.0, 1.0) and fig.axes[0].get_xlabel().startswith("fraction of the window")
    assert fig._suptitle.get_text().startswith("session ? · subject ? · times unknown")
    assert "in 4 bins" in fig.axes[0].get_title(loc="left")  # no bin size in ms: the times are unknown


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, checking the signature and the chunk's CRC."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(data[12:29])
    assert data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


def test_the_command_writes_a_png(arrays, tmp_path, capsys):
    out = tmp_path / "picture.png"
    assert main(["show", str(arrays), "--sample", "2", "-o", str(out), "--dpi", "40", "--width", "8"]) == 0
    height = 0.8 + 2.6 + 2.8 + 1.8 + 1.8 + 1.8 + 2.2 + 1.6  # title, then the panels (figure.HEIGHTS)
    assert png_size(out) == (8 * 40, round(height * 40))
    said = capsys.readouterr().out
    assert said.startswith(f"wrote {out} (320x{round(height * 40)} px): calcium:calcium, traces:eeg")


@pytest.mark.parametrize("flags, message", [
    (["--sample", "3"], "--sample 3 is out of range: arrays holds 3 samples (0 to 2)"),
    (["--key", "sample_000000004"], "--key 'sample_000000004' is not a sample of arrays: its keys run "
                                    "sample_000000001 to sample_000000003"),
    (["--field", "lfp"], "--field 'lfp' is not a field of arrays"),
    (["--window-ms", "100"], "--window-ms 100: the dataset has no timeline"),
    (["-o", "x.jpg"], "-o x.jpg: the picture's name must end in .png, .pdf, .svg"),
])
def test_command_errors_speak_in_flags(arrays, tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.chdir(tmp_path)  # where the picture would go by default
    assert main(["show", str(arrays), *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"neurocodec show: error: {message}") and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_command_refuses_sample_and_key_together_and_a_directory_as_output(arrays, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["show", str(arrays), "--sample", "1", "--key", "sample_000000001"])
    assert exited.value.code == 2
    assert "argument --key: not allowed with argument --sample" in capsys.readouterr().err
    assert main(["show", str(arrays), "-o", str(tmp_path)]) == 1
    assert f"-o {tmp_path} is a directory" in capsys.readouterr().err


def test_without_matplotlib_the_error_names_the_extra(arrays, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` meets when not installed
    assert main(["show", str(arrays), "-o", str(tmp_path / "x.png")]) == 1
    assert "pip install 'neurocodec[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
