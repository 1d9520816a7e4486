"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator, so failures reproduce."""
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The hostile-shard corpus's valid dataset, one per compression (read-only: cases copy it).

    Here rather than in tests/hostile_corpus.py so that the test_hostile_*.py modules share one.
    """
    from hostile_corpus import write_base

    return write_base(tmp_path_factory.mktemp("hostile-base"))


@pytest.fixture(scope="session")
def rank_server():
    """Forks the processes of gloo groups (`loader_util.run_ranks`): torch and neurocodec are
    imported once here instead of in every rank."""
    from isolated import ForkServer
    from loader_util import child_env

    server = ForkServer("torch", "torch.distributed", "neurocodec", "neurocodec.loader.dataloader", "loader_util",
                        env=child_env())
    yield server
    server.close()
