"""The `neurocodec` command's errors speak of its flags, not of Python arguments: `--overwrite`
for `overwrite=True`, `--series eeg=NAME` for `series={'eeg': name}`, `--shard-size` for
`shard_size`; they name the .npz file at fault; a directory given as `--input` stands for the
files in it, or the error says why it cannot. Real NWB and .npz files; the command's `main` runs
in this process (one run as a real subprocess shows it is the same there)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nwbfiles
from neurocodec import Dataset
from neurocodec.cli import build_parser, main
from neurocodec.cli.wording import flags_of, in_flags

PYTHON_SPEAK = re.compile(r"\b[a-z]+(_[a-z]+)*=(True|False|None|\{)|\b[a-z]+_[a-z_]+\b")


def error_of(capsys, *args: object) -> str:
    """The one error line of `neurocodec ARGS` (status 1), without its prefix."""
    status = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1, (status, err)
    prefix = f"neurocodec {args[0]}: error: "
    assert err.startswith(prefix), err
    return err[len(prefix):].strip()


def flags(command: str) -> dict[str, str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(getattr(a, "choices", None), dict))
    return flags_of(sub.choices[command])


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Path:
    return nwbfiles.simple_session(tmp_path_factory.mktemp("wording") / "rec0.nwb", seconds=3.0)


@pytest.fixture
def npz(tmp_path) -> Path:
    path = tmp_path / "rows.npz"
    np.savez(path, x=np.arange(12, dtype=np.float32).reshape(4, 3))
    return path


def test_an_existing_dataset_asks_for_overwrite_or_append(tmp_path, capsys, session, npz):
    out = tmp_path / "ds"
    assert main(["convert", "--input", str(npz), "--output", str(out), "--no-progress"]) == 0
    text = error_of(capsys, "convert", "--input", npz, "--output", out, "--no-progress")
    assert text.startswith(f"{out} already holds a dataset") and text.endswith("; pass --overwrite to replace it")
    assert "=True" not in text
    nwb_out = tmp_path / "nwb"
    assert main(["convert", "--input", str(session), "--output", str(nwb_out), "--modalities", "spikes",
                 "--no-progress"]) == 0
    capsys.readouterr()
    text = error_of(capsys, "convert", "--input", session, "--output", nwb_out, "--modalities", "spikes",
                    "--no-progress")
    assert text == (f"{nwb_out} already holds a dataset; pass --overwrite to replace it, or --append to add these "
                    "sessions to it")


def test_a_series_to_pick_is_named_as_the_flag_takes_it(tmp_path, capsys, session):
    text = error_of(capsys, "convert", "--input", session, "--output", tmp_path / "eeg", "--modalities", "eeg",
                    "--no-progress")
    assert text == (f"{session}: no ElectricalSeries is named like EEG; pick one with --series eeg=NAME from: "
                    "/processing/ecephys/LFP/lfp")
    # taking the advice works
    assert main(["convert", "--input", str(session), "--output", str(tmp_path / "eeg"), "--modalities", "eeg",
                 "--series", "eeg=lfp", "--no-progress"]) == 0


@pytest.mark.parametrize("args,expected", [
    (["--shard-size", "0"], "--shard-size must be a positive integer, got 0"),
    (["--workers", "0"], "--workers must be a positive integer, got 0"),
    (["--overlap", "1.5"], "--overlap must be in [0, 1), got 1.5"),
    (["--chunk-seconds", "1", "--sequence-length", "7"],
     "--chunk-seconds 1.0 makes chunks of 100 bins of 10.0 ms; --sequence-length 7 contradicts it (leave "
     "--sequence-length out)"),
    (["--field", "x=lfp:lfp", "--series", "x=lfp"], "the series of field 'x' is given both in --field and in --series"),
])
def test_converter_arguments_are_named_by_their_flags(tmp_path, capsys, session, args, expected):
    modalities = [] if "--field" in args else ["--modalities", "spikes"]
    text = error_of(capsys, "convert", "--input", session, "--output", tmp_path / "out", *modalities, *args,
                    "--no-progress")
    assert text == expected and not PYTHON_SPEAK.search(text), text
    assert not (tmp_path / "out").exists()


def test_npz_rows_that_differ_name_the_file(tmp_path, capsys, npz):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 3), np.float32), y=np.zeros(5, np.float32), s=np.float32(1))
    expected = (f"--input {bad}: its arrays must have one row per sample, the same number each (their first "
                "dimension): x has 4, y has 5, s is a scalar")
    assert error_of(capsys, "convert", "--input", bad, "--output", tmp_path / "one", "--no-progress") == expected
    assert error_of(capsys, "convert", "--input", npz, bad, "--output", tmp_path / "two", "--no-progress") == expected
    assert not (tmp_path / "one").exists()


def test_a_directory_as_input_stands_for_its_files(tmp_path, capsys, npz):
    folder = tmp_path / "recordings"
    (folder / "day2" / ".cache").mkdir(parents=True)
    np.savez(folder / "day1.npz", x=np.full((2, 3), 1, np.float32))
    np.savez(folder / "day2" / "a.npz", x=np.full((3, 3), 2, np.float32))
    np.savez(folder / "day2" / ".cache" / "old.npz", x=np.full((9, 3), 9, np.float32))  # hidden: left out
    (folder / "notes.txt").write_text("not an input")
    assert main(["convert", "--input", str(folder), "--output", str(tmp_path / "ds"), "--no-progress"]) == 0
    assert "wrote 5 samples" in capsys.readouterr().out
    with Dataset(tmp_path / "ds") as ds:
        assert [float(ds[i]["x"][0]) for i in range(len(ds))] == [1, 1, 2, 2, 2]  # path order

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.md").write_text("nothing to convert")
    text = error_of(capsys, "convert", "--input", empty, "--output", tmp_path / "e", "--no-progress")
    assert text.startswith(f"--input {empty}: a directory with no .nwb or .npz file and no NWB-Zarr folder in it")
    (folder / "day3.nwb").write_bytes(b"")
    text = error_of(capsys, "convert", "--input", folder, "--output", tmp_path / "m", "--no-progress")
    assert text.startswith("--input names both NWB and .npz inputs")
    text = error_of(capsys, "convert", "--input", folder / "notes.txt", "--output", tmp_path / "t", "--no-progress")
    assert text == (f"--input {folder / 'notes.txt'}: cannot tell its format from its name (not .nwb, .npz or an "
                    "NWB-Zarr folder); pass --format nwb or --format npz")


def test_library_wording_becomes_each_commands_flags():
    convert = flags("convert")
    assert in_flags("x.nwb: /acquisition/movie may hold fmri data, but ... Take it as fmri with series={'fmri': "
                    "'my movie'} (or as video with series={'video': 'my movie'})", convert) == (
        "x.nwb: /acquisition/movie may hold fmri data, but ... Take it as fmri with --series 'fmri=my movie' "
        "(or as video with --series 'video=my movie')")
    assert in_flags("values must be ints, e.g. modalities={'<field>': 'array'}, which keeps any dtype", convert) == (
        "values must be ints, e.g. --modalities <field>=array, which keeps any dtype")  # a placeholder
    assert in_flags("bin_size_ms=2.5 does not divide the window; or convert with workers=1", convert) == (
        "--bin-size-ms 2.5 does not divide the window; or convert with --workers 1")
    assert in_flags("(the per-member ceiling; raise it with max_member_bytes= or NEUROCODEC_MAX_MEMBER_BYTES)",
                    flags("verify")) == "(the per-member ceiling; raise it with NEUROCODEC_MAX_MEMBER_BYTES)"
    # paths and names that merely contain an argument's name stay as they are
    assert in_flags("/data/shard_size/nan_policy.nwb: field shard_size_x", convert) == (
        "/data/shard_size/nan_policy.nwb: field shard_size_x")
    # a flag the command does not have is never suggested
    assert in_flags("pass overwrite=True to replace it", flags("info")) == "pass overwrite=True to replace it"


def test_the_same_in_a_real_subprocess(tmp_path, capsys, npz):
    args = ["convert", "--input", str(npz), "--output", str(tmp_path / "ds"), "--no-progress"]
    assert main(args) == 0
    expected = error_of(capsys, *args)
    done = subprocess.run([sys.executable, "-m", "neurocodec", *args], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", f"neurocodec convert: error: {expected}\n")
    assert expected.endswith("pass --overwrite to replace it")
