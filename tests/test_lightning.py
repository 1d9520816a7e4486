"""PyTorch Lightning: a LightningDataModule returning create_webdataset_dataloader, trained by a
real Trainer on the CPU (examples/lightning_example.py, run in this process once): every epoch
reads the whole dataset in its own order, the order neurocodec's loader gives without Lightning,
and runs resumed from a mid-epoch and from an end-of-epoch checkpoint see exactly the batches of
the uninterrupted run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from neurocodec import create_webdataset_dataloader

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lightning_example.py"
SAMPLES, EPOCHS = 72, 4


def _example():
    spec = importlib.util.spec_from_file_location("lightning_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The example with 2 persistent workers: one uninterrupted fit, two resumed ones."""
    root = tmp_path_factory.mktemp("lightning")
    result = _example().main(["--samples", str(SAMPLES), "--workers", "2", "--epochs", str(EPOCHS),
                              "--workdir", str(root)])
    result["root"] = root
    return result


@pytest.mark.multiprocess
def test_every_epoch_reads_the_whole_dataset_in_its_own_order(run):
    per_epoch = [[k for e, batch in run["full"] if e == epoch for k in batch] for epoch in range(EPOCHS)]
    for keys in per_epoch:
        assert len(keys) == SAMPLES and len(set(keys)) == SAMPLES
    assert len({tuple(keys) for keys in per_epoch}) == EPOCHS
    # The order is neurocodec's, Lightning or not: the same loader settings, iterated by hand.
    plain = create_webdataset_dataloader(run["root"] / "shards", batch_size=16, num_workers=0, seed=0,
                                         buffer_size=64, pin_memory=False)
    assert per_epoch == [[k for batch in plain for k in batch["__key__"]] for _ in range(EPOCHS)]


@pytest.mark.multiprocess
def test_resumed_fits_see_exactly_the_rest_of_the_uninterrupted_run(run):
    full, batches, middle = run["full"], run["batches"], run["middle"]
    mid = run["resumed"][f"step{middle}"]
    assert mid == full[middle:] and mid[0][0] == 1  # from the middle of epoch 1
    end = run["resumed"]["end-of-epoch1"]
    assert end == full[2 * batches:] and end[0][0] == 2  # from the start of epoch 2
