"""The user guide's eight examples, end to end, on synthetic data.

    python examples/webdataset_example.py [--samples N] [--workdir DIR] [--workers W]

1. Basic shard writing            5. PyTorch DataLoader integration
2. Advanced writing with metadata 6. Multi-worker loading
3. Basic loading                  7. Inspecting shards
4. Resumable loading              8. Training loop (with exact resume)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from neurocodec.datasets import (
    ResumableWebDatasetLoader, ShardedDatasetInfo, WebDatasetLoader, WebDatasetWriter,
    create_shards_from_arrays, create_webdataset_dataloader,
)


def example_1_basic_writing(root: Path, n: int) -> Path:
    """Arrays to shards with create_shards_from_arrays."""
    out = root / "basic_shards"
    rng = np.random.default_rng(0)
    data = {
        "spikes": rng.poisson(0.5, size=(n, 100, 96)).astype(np.int64),
        "behavior": rng.standard_normal((n, 100, 2)).astype(np.float32),
        "lfp": rng.standard_normal((n, 16, 250)).astype(np.float32),
    }
    summary = create_shards_from_arrays(out, data, shard_size=max(1, n // 4), overwrite=True)
    print(f"[1] wrote {summary['samples']} samples in {summary['shards']} shards ({summary['bytes']:,} bytes)")
    return out


def example_2_writing_with_metadata(root: Path, n: int) -> Path:
    """One sample at a time with per-sample metadata and zstd compression."""
    out = root / "meta_shards"
    rng = np.random.default_rng(1)
    with WebDatasetWriter(out, shard_size=max(1, n // 4), compression="zstd", overwrite=True) as writer:
        for i in range(n):
            sample = {"spikes": rng.poisson(0.5, size=(100, 96)), "behavior": rng.standard_normal((100, 2))}
            writer.write_sample(sample, metadata={"trial_id": i, "condition": "left" if i % 2 == 0 else "right"})
    summary = writer.finalize()
    print(f"[2] wrote {summary['samples']} samples with metadata, compression {summary['compression']}")
    return out


def example_3_basic_loading(shards: Path) -> None:
    """Iterate samples with a shuffle buffer."""
    loader = WebDatasetLoader(shards, shuffle=True, buffer_size=100, seed=0)
    first = next(iter(loader))
    count = 1 + sum(1 for _ in loader)  # iterating again continues the same epoch
    print(f"[3] first sample {first['__key__']}: spikes {tuple(first['spikes'].shape)}, "
          f"behavior {tuple(first['behavior'].shape)}; {count} samples per epoch")


def example_4_resumable_loading(shards: Path, root: Path) -> None:
    """Checkpoint every few samples; a new loader resumes automatically."""
    ckpt = root / "checkpoint.json"
    ckpt.unlink(missing_ok=True)
    loader = ResumableWebDatasetLoader(shards, checkpoint_path=ckpt, checkpoint_interval=10, seed=0)
    seen = []
    for sample in loader:
        seen.append(sample["__key__"])
        if len(seen) == 25:
            break  # "interrupted": the checkpoint holds the first 20 samples
    resumed = ResumableWebDatasetLoader(shards, checkpoint_path=ckpt, seed=0)
    rest = [s["__key__"] for s in resumed]
    full = [s["__key__"] for s in WebDatasetLoader(shards, seed=0)]
    assert seen[:20] + rest == full, "resume must continue exactly after the checkpoint"
    print(f"[4] interrupted after 25 samples, checkpoint at 20, resumed with {len(rest)}: stream identical")


def example_5_dataloader(shards: Path, workers: int) -> None:
    """Batched tensors from create_webdataset_dataloader."""
    loader = create_webdataset_dataloader(shards, batch_size=32, num_workers=workers, shuffle=True,
                                          buffer_size=100, prefetch_factor=2, pin_memory=False)
    batch = next(iter(loader))
    print(f"[5] batch: spikes {tuple(batch['spikes'].shape)} {batch['spikes'].dtype}, "
          f"behavior {tuple(batch['behavior'].shape)}, {len(batch['metadata'])} metadata dicts")


def example_6_multi_worker(shards: Path, workers: int) -> None:
    """The same stream for any number of workers, every sample exactly once."""
    streams = {}
    for w in sorted({0, workers}):
        loader = create_webdataset_dataloader(shards, batch_size=16, num_workers=w, seed=7)
        streams[w] = [k for b in loader for k in b["__key__"]]
    keys = streams[0]
    assert all(s == keys for s in streams.values()) and len(set(keys)) == len(keys)
    print(f"[6] workers {sorted(streams)}: identical streams of {len(keys)} unique samples")


def example_7_inspecting(shards: Path) -> None:
    """Summaries from the manifest."""
    info = ShardedDatasetInfo(shards)
    info.print_summary()
    summary = info.get_summary()
    print(f"[7] {summary['total_samples']} samples, {summary['total_shards']} shards, modalities {summary['modalities']}")


class TinyDecoder(torch.nn.Module):
    """A small model standing in for a foundation model: spikes -> behavior."""

    def __init__(self, units: int, dims: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(units, 64), torch.nn.GELU(), torch.nn.Linear(64, dims))

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        """(batch, time, units) -> (batch, time, dims)."""
        return self.net(spikes)


def example_8_training(shards: Path, root: Path, workers: int) -> None:
    """Two epochs of training; the loader state is saved with the model and restores exactly."""
    torch.manual_seed(0)
    loader = create_webdataset_dataloader(shards, batch_size=32, num_workers=workers, seed=0)
    model = TinyDecoder(96, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(2):
        total, batches = 0.0, 0
        for batch in loader:
            loss = torch.nn.functional.mse_loss(model(batch["spikes"].float()), batch["behavior"].float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        print(f"[8] epoch {epoch}: {batches} batches, mean loss {total / max(batches, 1):.4f}")
    ckpt = root / "train_state.json"
    ckpt.write_text(json.dumps({"loader": loader.state_dict()}))
    restored = create_webdataset_dataloader(shards, batch_size=32, num_workers=0, seed=0)
    restored.load_state_dict(json.loads(ckpt.read_text())["loader"])
    assert restored.epoch == 2
    print(f"[8] loader state saved with the checkpoint: epoch {restored.epoch}, position {restored.state_dict()['position']}")


def main(argv: list[str] | None = None) -> None:
    """Run all eight examples."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1000, help="samples per dataset (default 1000)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        basic = example_1_basic_writing(root, args.samples)
        meta = example_2_writing_with_metadata(root, args.samples)
        example_3_basic_loading(basic)
        example_4_resumable_loading(meta, root)
        example_5_dataloader(meta, args.workers)
        example_6_multi_worker(basic, args.workers)
        example_7_inspecting(basic)
        example_8_training(basic, root, args.workers)


if __name__ == "__main__":
    main()
