"""Write a small built-in example dataset and print its summary.

    python examples/quickstart.py [OUTPUT_DIR]
"""

import sys

import numpy as np

from neurocodec import ShardedDatasetInfo, create_shards_from_arrays


def main(output_dir: str = "./shards") -> None:
    """Write 2,000 synthetic trials of spikes, behavior and LFP as shards of 500 samples."""
    rng = np.random.default_rng(0)
    data = {
        "spikes": rng.poisson(0.3, size=(2000, 100, 96)).astype(np.int64),
        "behavior": rng.standard_normal((2000, 100, 2)).astype(np.float32),
        "lfp": rng.standard_normal((2000, 16, 250)).astype(np.float32),
    }
    summary = create_shards_from_arrays(output_dir, data, shard_size=500, overwrite=True)
    print(f"wrote {summary['samples']} samples in {summary['shards']} shards to {output_dir}")
    ShardedDatasetInfo(output_dir).print_summary()


if __name__ == "__main__":
    main(*sys.argv[1:])
