"""Training with PyTorch Lightning: a LightningDataModule returning `create_webdataset_dataloader`.

    python examples/lightning_example.py [--samples N] [--workers W] [--epochs E] [--workdir DIR]

Writes a small spikes -> behavior dataset, trains a tiny decoder for a few epochs on the CPU with
checkpoints in the middle of an epoch and at each epoch's end, then resumes from both and checks
that the resumed runs see exactly the samples, in exactly the order, of the uninterrupted run.
Needs `lightning` (or `pytorch-lightning`) installed: see docs/training.md.

Nothing Lightning-specific is needed in the DataModule: Lightning saves the loader's
`state_dict()` in its checkpoints and restores it when resuming inside an epoch, and at the start
of each epoch tells the loader its number through `loader.sampler.set_epoch`, which is what a
resume from an epoch's end needs.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurocodec import create_shards_from_arrays, create_webdataset_dataloader

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
except ImportError:  # the older package name
    import pytorch_lightning as pl  # type: ignore[no-redef]
    from pytorch_lightning.callbacks import ModelCheckpoint  # type: ignore[no-redef]

UNITS, DIMS, STEPS = 32, 2, 20


def write_dataset(out: Path, samples: int) -> Path:
    """`samples` trials of spike counts and the behavior they encode, in shards of 32."""
    rng = np.random.default_rng(0)
    spikes = rng.poisson(0.5, size=(samples, STEPS, UNITS)).astype(np.int64)
    readout = rng.standard_normal((UNITS, DIMS)).astype(np.float32)
    behavior = (spikes.astype(np.float32) @ readout) / UNITS
    create_shards_from_arrays(out, {"spikes": spikes, "behavior": behavior}, shard_size=32, overwrite=True)
    return out


class NeuralData(pl.LightningDataModule):
    """The training split of a neurocodec dataset, batched by `create_webdataset_dataloader`."""

    def __init__(self, path: Path, batch_size: int = 16, workers: int = 2, seed: int = 0) -> None:
        super().__init__()
        self.path, self.batch_size, self.workers, self.seed = path, batch_size, workers, seed
        self.loader: Any = None

    def train_dataloader(self) -> Any:
        """One loader for the whole fit: it moves to the next epoch by itself."""
        if self.loader is None:
            self.loader = create_webdataset_dataloader(
                self.path, batch_size=self.batch_size, num_workers=self.workers, seed=self.seed,
                buffer_size=64, persistent_workers=self.workers > 0, pin_memory=False)
        return self.loader


class Decoder(pl.LightningModule):
    """A tiny spikes -> behavior decoder that also records the samples of every batch."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(UNITS, 32), torch.nn.GELU(), torch.nn.Linear(32, DIMS))
        self.seen: list[tuple[int, list[str]]] = []  # (epoch, the batch's sample keys)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Mean squared error of the decoded behavior."""
        self.seen.append((self.current_epoch, list(batch["__key__"])))
        return torch.nn.functional.mse_loss(self.net(batch["spikes"].float()), batch["behavior"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam."""
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def fit(data: NeuralData, root: Path, epochs: int, ckpt_path: Path | None = None,
        every_n_steps: int | None = None) -> Decoder:
    """Train for `epochs` (resuming from `ckpt_path` if given); with `every_n_steps`, save a
    checkpoint every that many steps and at each epoch's end into root/checkpoints."""
    callbacks = []
    if every_n_steps:
        folder = root / "checkpoints"
        callbacks = [ModelCheckpoint(dirpath=folder, filename="step{step}", every_n_train_steps=every_n_steps,
                                     save_top_k=-1, auto_insert_metric_name=False),
                     ModelCheckpoint(dirpath=folder, filename="end-of-epoch{epoch}", every_n_epochs=1, save_top_k=-1,
                                     save_on_train_epoch_end=True, auto_insert_metric_name=False)]
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, callbacks=callbacks,
                         enable_checkpointing=bool(callbacks), enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=root)
    model = Decoder()
    with warnings.catch_warnings():  # Lightning's advice about workers, checkpoint callbacks and its own deprecations
        warnings.filterwarnings("ignore", message=".*(workers|IterableDataset|ckpt_path|LeafSpec).*")
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return model


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, resume from a mid-epoch and an end-of-epoch checkpoint, compare; returns the runs."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200, help="samples in the dataset (default 200)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs (default 4)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # its GPU/TPU lines and tips
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        path = write_dataset(root / "shards", args.samples)
        batches = len(NeuralData(path, workers=0).train_dataloader())
        middle = batches + batches // 2  # a step in the middle of epoch 1
        full = fit(NeuralData(path, workers=args.workers), root, args.epochs, every_n_steps=middle).seen
        for epoch in range(args.epochs):
            keys = [k for e, batch in full if e == epoch for k in batch]
            print(f"[lightning] epoch {epoch}: {len(keys)} samples, {len(set(keys))} distinct, first {keys[:3]}")
        resumed = {}
        for name in (f"step{middle}", "end-of-epoch1"):
            ckpt = root / "checkpoints" / f"{name}.ckpt"
            seen = fit(NeuralData(path, workers=args.workers), root, args.epochs, ckpt_path=ckpt).seen
            same = seen == full[len(full) - len(seen):]
            print(f"[lightning] resumed from {ckpt.name}: {len(seen)} batches, "
                  f"{'the same samples in the same order' if same else 'DIFFERENT'} as the uninterrupted run")
            resumed[name] = seen
        return {"full": full, "resumed": resumed, "batches": batches, "middle": middle}


if __name__ == "__main__":
    main()
