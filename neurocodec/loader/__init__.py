"""Loading shards for training: order, ranks and workers, state, datasets and the DataLoader."""
