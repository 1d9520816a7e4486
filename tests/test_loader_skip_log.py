"""`on_error="skip"` logs the first bad sample of each shard, not every one, and a summary with
the counts at the end of each epoch, once, from the main process, also when DataLoader workers
did the reading. Real shards with real damage: one truncated (unreadable as a whole), one with a
byte of every member's payload flipped (every sample fails its own CRC check)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from loader_util import flat_ids, sample_id, write_ids_dataset

from neurocodec import Dataset, WebDatasetLoader, create_webdataset_dataloader

N, SHARD = 160, 40
TRUNCATED, FLIPPED = "shard_000001.tar", "shard_000003.tar"
BAD = set(range(40, 80)) | set(range(120, 160))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return write_ids_dataset(tmp_path_factory.mktemp("skip-log") / "ds", N, SHARD)


@pytest.fixture(scope="module")
def damaged(pristine, tmp_path_factory) -> Path:
    path = Path(shutil.copytree(pristine, tmp_path_factory.mktemp("skip-log-damaged") / "ds"))
    with Dataset(path) as ds:
        rows = ds.shard(3).rows.copy()
    shard = path / FLIPPED
    data = bytearray(shard.read_bytes())
    for offset, stored in rows[:, 0, :2].tolist():  # the first member (x) of every sample
        data[offset + stored - 1] ^= 0x10
    shard.write_bytes(bytes(data))
    truncated = path / TRUNCATED
    truncated.write_bytes(truncated.read_bytes()[:4096])
    return path


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "neurocodec.loader" and r.levelno == logging.WARNING]


def summary(path: Path, epoch: int) -> str:
    return (f"skipped 80 samples in 2 shards this epoch (epoch {epoch} of {path}): {TRUNCATED} 40, {FLIPPED} 40")


def test_one_line_per_bad_shard_and_a_summary_each_epoch(pristine, damaged, caplog):
    loader = WebDatasetLoader(damaged, buffer_size=16, seed=5, on_error="skip")
    reference = WebDatasetLoader(pristine, buffer_size=16, seed=5)
    for epoch in range(2):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="neurocodec.loader"):
            got = [sample_id(s) for s in loader]
        assert got == [i for i in map(sample_id, reference) if i not in BAD]
        lines = warnings(caplog)
        assert len(lines) == 3 and lines[-1] == summary(damaged, epoch), lines
        firsts = sorted(lines[:2], key=lambda text: TRUNCATED not in text)
        assert firsts[0].startswith(f"skipping bad samples of shard {TRUNCATED} of {damaged} in epoch {epoch}, "
                                    "the first sample ") and "file has 4096 bytes" in firsts[0]
        assert firsts[1].startswith(f"skipping bad samples of shard {FLIPPED} of {damaged} in epoch {epoch}, ")
        assert "CRC" in firsts[1] or "crc" in firsts[1]
        assert loader.get_state()["skipped"] == 80 * (epoch + 1)


@pytest.mark.multiprocess
@pytest.mark.parametrize("workers", [0, 2])
def test_workers_announce_their_own_and_the_main_process_sums_up(pristine, damaged, tmp_path, caplog, workers):
    log_file = tmp_path / "log.txt"
    handler = logging.FileHandler(log_file)  # forked workers inherit it: their lines land here too
    logger = logging.getLogger("neurocodec.loader")
    logger.addHandler(handler)
    options = dict(batch_size=8, buffer_size=16, seed=5, num_workers=workers)
    if workers:
        options["multiprocessing_context"] = "fork"
    try:
        with caplog.at_level(logging.WARNING, logger="neurocodec.loader"):
            loader = create_webdataset_dataloader(damaged, on_error="skip", **options)
            got = flat_ids(loader)
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert got == [i for i in flat_ids(create_webdataset_dataloader(pristine, **options)) if i not in BAD]
    assert loader.state_dict()["skipped"] == 80
    lines = log_file.read_text().splitlines()
    assert [line for line in lines if line.startswith("skipped")] == [summary(damaged, 0)]
    assert [text for text in warnings(caplog) if text.startswith("skipped")] == [summary(damaged, 0)]  # main's
    for shard in (TRUNCATED, FLIPPED):
        told = [line for line in lines if line.startswith(f"skipping bad samples of shard {shard} ")]
        assert 1 <= len(told) <= workers + 1, lines  # once per process that read the shard
    assert len(lines) <= 2 * (workers + 1) + 1
