"""Bad data through the loaders (issue 3, point 8) and the map-style dataset (point 7).

A missing, truncated or corrupted shard raises `ShardError` naming the shard and the sample by
default, also from DataLoader workers (never a hang); with `on_error="skip"` bad samples are
logged, left out and counted in the state while every other sample stays intact and in order.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import textwrap
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from loader_util import child_env, flat_ids, sample_id, write_ids_dataset

from neurocodec import (
    Dataset,
    RandomAccessWebDataset,
    ShardError,
    WebDatasetLoader,
    collate_webdataset,
    create_webdataset_dataloader,
)

N, SHARD = 30, 6
BAD_SHARD = "shard_000002.tar"
SHARD_IDS = set(range(12, 18))
FLIPPED = 14  # shard 2, local sample 2


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return write_ids_dataset(tmp_path_factory.mktemp("errors") / "ds", N, SHARD)


def copy(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "ds"))


def member_span(path: Path, sample: int, field: str) -> tuple[int, int]:
    """(file offset, stored size) of the payload of `field` of global sample `sample`, from the index."""
    with Dataset(path) as ds:
        number, local = ds.locate(sample)
        column = [f.name for f in ds.fields].index(field)
        offset, stored = ds.shard(number).rows[local, column, :2]
        return int(offset), int(stored)


def member_offset(path: Path, sample: int, field: str) -> int:
    """File offset of the payload of `field` of global sample `sample`."""
    return member_span(path, sample, field)[0]


def flip(file: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(file.read_bytes())
    data[offset] ^= 1 << bit
    file.write_bytes(bytes(data))


def corrupt(path: Path, kind: str) -> set[int]:
    """Damage the dataset at `path`; the ids of the samples that can no longer be read."""
    shard = path / BAD_SHARD
    if kind == "missing":
        shard.unlink()
        return SHARD_IDS
    if kind == "truncated":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
        return SHARD_IDS
    if kind == "index":
        flip(shard.with_name(f".{shard.stem}.idx"), 200)
        return SHARD_IDS
    if kind == "payload":  # a single bit in the last byte of sample 14's array data
        offset, stored = member_span(path, FLIPPED, "x")
        flip(shard, offset + stored - 1, 3)
        return {FLIPPED}
    if kind == "metadata":  # a bit in the JSON metadata of sample 14
        flip(shard, member_offset(path, FLIPPED, "metadata") + 2, 1)
        return {FLIPPED}
    if kind == "header":  # a bit in the tar header (member name) of sample 14's array
        flip(shard, member_offset(path, FLIPPED, "x") - 512 + 10, 0)
        return {FLIPPED}
    raise AssertionError(kind)


KINDS = ["missing", "truncated", "index", "payload", "metadata", "header"]


def check_error(err: ShardError, bad: set[int]) -> None:
    """The error names the shard and a bad sample (id and key)."""
    text = str(err)
    assert BAD_SHARD in text, text
    assert err.shard == BAD_SHARD
    assert err.sample in bad, (err.sample, bad)
    assert f"sample {err.sample}" in text
    if len(bad) == 1:  # a damaged member: its name carries the key
        assert f"sample_{err.sample + 1:09d}" in text, text


@pytest.mark.parametrize("kind", KINDS)
def test_default_raises_naming_shard_and_sample(pristine, tmp_path, kind):
    path = copy(pristine, tmp_path)
    bad = corrupt(path, kind)
    reference = [sample_id(s) for s in WebDatasetLoader(pristine, buffer_size=8, seed=3)]
    loader = WebDatasetLoader(path, buffer_size=8, seed=3)
    got = []
    with pytest.raises(ShardError) as info:
        for s in loader:
            got.append(sample_id(s))  # everything before the error is intact
    check_error(info.value, bad)
    first_bad = next(i for i, x in enumerate(reference) if x in bad)
    assert got == reference[:first_bad] and info.value.sample == reference[first_bad]
    # The state still points at the bad sample: fixing the data and resuming loses nothing.
    assert loader.get_state()["position"] == first_bad


WORKER_SCRIPT = textwrap.dedent("""
    import json, sys
    from neurocodec import ShardError, create_webdataset_dataloader

    report, keep = [], []  # keep the failed iterators alive: torch joins their workers slowly
    for path in sys.argv[1:]:
        loader = create_webdataset_dataloader(path, batch_size=4, num_workers=2, buffer_size=8, seed=3)
        try:
            for batch in loader:
                pass
            report.append(None)
        except ShardError as exc:
            keep.append(exc)
            report.append({"type": type(exc).__name__, "message": str(exc)})
    print(json.dumps(report))
""")


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_error_propagates_from_dataloader_workers(pristine, tmp_path):
    """In a child process (as in training): ShardError from a worker reaches the loop, and the
    process ends (no hang) with the shard and sample named."""
    kinds = ["missing", "truncated", "payload"]
    paths, bads = [], []
    for kind in kinds:
        path = Path(shutil.copytree(pristine, tmp_path / kind))
        bads.append(corrupt(path, kind))
        paths.append(str(path))
    script = tmp_path / "workers.py"
    script.write_text(WORKER_SCRIPT)
    done = subprocess.run([sys.executable, str(script), *paths], capture_output=True, text=True, timeout=100,
                          env=child_env())
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for kind, bad, got in zip(kinds, bads, report):
        assert got is not None and got["type"] == "ShardError", (kind, got)
        assert BAD_SHARD in got["message"] and any(f"sample {i}" in got["message"] for i in bad), got
        if kind == "payload":
            assert f"sample_{FLIPPED + 1:09d}" in got["message"]


@pytest.mark.parametrize("kind", KINDS)
def test_skip_logs_counts_and_keeps_the_rest_exact(pristine, tmp_path, kind, caplog):
    path = copy(pristine, tmp_path)
    bad = corrupt(path, kind)
    reference = [sample_id(s) for s in WebDatasetLoader(pristine, buffer_size=8, seed=3)]
    loader = WebDatasetLoader(path, buffer_size=8, seed=3, on_error="skip")
    with caplog.at_level(logging.WARNING, logger="neurocodec.loader"):
        got = [sample_id(s) for s in loader]
    assert got == [i for i in reference if i not in bad]
    assert loader.get_state()["skipped"] == len(bad)
    warnings = [r.getMessage() for r in caplog.records if r.name == "neurocodec.loader"
                and r.levelno == logging.WARNING]
    # the first bad sample of the shard, then the epoch's summary (not one line per sample)
    assert len(warnings) == 2 and all(BAD_SHARD in text for text in warnings), warnings
    assert warnings[0].startswith(f"skipping bad samples of shard {BAD_SHARD} of {path} in epoch 0, the first "
                                  f"sample {next(i for i in reference if i in bad)}: ")
    assert warnings[1] == (f"skipped {len(bad)} sample{'s' * (len(bad) > 1)} in 1 shard this epoch (epoch 0 of "
                           f"{path}): {BAD_SHARD} {len(bad)}")


@pytest.mark.multiprocess
@pytest.mark.parametrize("workers", [0, 2])
def test_skip_through_dataloader(pristine, tmp_path, workers):
    path = copy(pristine, tmp_path)
    flip(path / "shard_000004.tar", member_offset(path, 27, "x") + 20, 2)  # sample 27 first: it opens the dataset
    bad = corrupt(path, "missing") | {27}
    reference = flat_ids(create_webdataset_dataloader(pristine, batch_size=4, num_workers=0, buffer_size=8, seed=3))
    loader = create_webdataset_dataloader(path, batch_size=4, num_workers=workers, buffer_size=8, seed=3,
                                          on_error="skip")
    assert flat_ids(loader) == [i for i in reference if i not in bad]
    assert loader.state_dict()["skipped"] == len(bad)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_skip_count_survives_resume(pristine, tmp_path, batch_size):
    """Resuming mid-epoch neither loses nor double-counts skipped samples."""
    path = copy(pristine, tmp_path)
    corrupt(path, "payload")
    flip(path / "shard_000004.tar", member_offset(path, 27, "x") + 20, 2)
    bad = {FLIPPED, 27}
    reference = [sample_id(s) for s in WebDatasetLoader(pristine, buffer_size=8, seed=3)]
    expected = [i for i in reference if i not in bad]
    for k in range(len(expected) + 1):
        first = WebDatasetLoader(path, buffer_size=8, seed=3, on_error="skip", batch_size=batch_size)
        it = iter(first)
        head = [sample_id(next(it)) for _ in range(k)]
        state = first.get_state()
        second = WebDatasetLoader(path, buffer_size=8, seed=3, on_error="skip", batch_size=batch_size)
        second.set_state(state)
        # (after the epoch's last good sample, iterating on would start the next epoch)
        assert head + [sample_id(s) for s in islice(second, len(expected) - k)] == expected
        assert second.get_state()["skipped"] == len(bad), (k, state)


def test_verify_none_still_never_decodes_a_bad_header(pristine, tmp_path):
    path = copy(pristine, tmp_path)
    corrupt(path, "header")
    with pytest.raises(ShardError):
        list(WebDatasetLoader(path, verify="none"))


# --------------------------------------------------------------------------- map-style


def test_random_access_equals_dataset_reads(pristine):
    ds = RandomAccessWebDataset(pristine)
    with Dataset(pristine) as ref:
        assert len(ds) == len(ref) == N
        for i in range(N):
            got, want = ds[i], ref[i]
            assert got["__key__"] == want["__key__"] and sample_id(got) == i
            assert isinstance(got["x"], torch.Tensor)
            assert np.array_equal(got["x"].numpy(), want["x"]) and got["metadata"] == want["metadata"]
    assert sample_id(ds[-1]) == N - 1
    with pytest.raises(IndexError):
        ds[N]
    raw = RandomAccessWebDataset(pristine, tensors=False)[3]
    assert isinstance(raw["x"], np.ndarray)


@pytest.mark.multiprocess
def test_random_access_in_dataloader_with_workers_and_sampler(pristine):
    ds = RandomAccessWebDataset(pristine)
    sampler = torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(0))
    expected = list(torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(0)))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2,
                                         collate_fn=collate_webdataset)
    assert flat_ids(loader) == expected and sorted(expected) == list(range(N))


def test_random_access_bad_shard_fails_only_there(pristine, tmp_path):
    path = copy(pristine, tmp_path)
    corrupt(path, "payload")
    ds = RandomAccessWebDataset(path)
    assert [sample_id(ds[i]) for i in range(N) if i != FLIPPED] == [i for i in range(N) if i != FLIPPED]
    with pytest.raises(ShardError) as info:
        ds[FLIPPED]
    assert BAD_SHARD in str(info.value) and f"sample_{FLIPPED + 1:09d}" in str(info.value)
