"""The user guide's loading, advanced and integration blocks run as written (import line changed).

A small dataset of the guide's shape (randn spikes (100, 96), behavior (100, 2)) stands in
./shards, ./train_shards and ./val_shards; the blocks themselves are not edited, except that the
Integration block's model import is replaced by a small model, as the spec allows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from guide import run_block
from neurocodec import WebDatasetLoader, create_shards_from_arrays

N = 160


@pytest.fixture
def guide_cwd(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for name in ("shards", "train_shards", "val_shards"):
        data = {"spikes": rng.standard_normal((N, 100, 96)).astype(np.float32),
                "behavior": rng.standard_normal((N, 100, 2)).astype(np.float32)}
        create_shards_from_arrays(tmp_path / name, data, shard_size=40, fsync=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _all_keys(**kwargs) -> list[str]:
    return [s["__key__"] for s in WebDatasetLoader("./shards", **kwargs)]


@pytest.mark.multiprocess
def test_quick_start_load_shards_in_training(guide_cwd):
    ns = run_block("2. Load Shards in Training")
    assert ns["spikes"].shape[1:] == (100, 96) and ns["behavior"].shape[1:] == (100, 2)
    assert len(ns["train_loader"]) == N // 32


def test_basic_loading(guide_cwd, capsys):
    run_block("Basic Loading")
    lines = capsys.readouterr().out.splitlines()
    assert lines.count("torch.Size([100, 96])") == N and lines.count("torch.Size([100, 2])") == N


def test_resumable_loading_checkpoints_and_resumes(guide_cwd):
    ns = run_block("Resumable Loading")
    saved = json.loads((guide_cwd / "checkpoint.json").read_text())["loader_state"]
    assert (saved["epoch"], saved["position"]) == (1, 0)  # the pass completed
    assert ns["loader2"].epoch == 1


@pytest.mark.multiprocess
def test_with_pytorch_dataloader(guide_cwd):
    ns = run_block("With PyTorch DataLoader", {"num_epochs": 2})
    assert ns["train_loader"].epoch == 2 and ns["spikes"].shape == (N % 32 or 32, 100, 96)


def test_state_management_continues_exactly(guide_cwd):
    ns = run_block("State Management", {"WebDatasetLoader": WebDatasetLoader})  # imported earlier
    loader, state = ns["loader"], ns["state"]
    assert state["position"] == 100 and json.loads(json.dumps(state)) == state
    rest = [s["__key__"] for s in loader]
    full = _all_keys()
    assert full[100:] == rest


def test_custom_collate_function(guide_cwd):
    ns = run_block("Custom Collate Function")
    batches = list(ns["loader"])
    assert len(batches) == -(-N // 32)
    assert batches[0]["spikes"].shape == (32, 100, 96)
    assert float(batches[0]["spikes"].max()) == pytest.approx(1.0)


class _SmallNeuroFMX(torch.nn.Module):
    """Stands in for NeuroFMX: (batch, time, units) -> (batch, time, 2)."""

    def __init__(self, input_dim: int, hidden_dim: int, n_layers: int) -> None:
        super().__init__()
        layers = [torch.nn.Linear(input_dim, 16)] + [torch.nn.Linear(16, 16) for _ in range(n_layers - 2)]
        self.body = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))


@pytest.mark.multiprocess
def test_integration_training_script(guide_cwd):
    ns = run_block(
        "Training Script", {"NeuroFMX": _SmallNeuroFMX, "criterion": torch.nn.MSELoss(), "num_epochs": 1},
        replace={"from neuros_neurofm.models import NeuroFMX\n": ""},
    )
    assert ns["train_loader"].epoch == 1 and ns["val_loader"].epoch == 1
    assert torch.isfinite(ns["loss"])
