"""Loaders over several datasets mixed by weights (issue 16, point 2): shares per epoch, real
DataLoader workers, exact resume chained across worker counts and world sizes at random stops,
the mix's fingerprint, and datasets whose unit counts differ in one batch."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from neurocodec import WebDatasetLoader, create_webdataset_dataloader
from neurocodec.errors import DatasetError
from neurocodec.loader.mix_order import epoch_counts

sys.path.insert(0, str(Path(__file__).parent))
from nwbfiles import simple_session  # noqa: E402
from test_timeline import convert  # noqa: E402


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("mix")
    out = []
    for i, (name, seconds, units) in enumerate([("a", 8.0, 3), ("b", 3.0, 5), ("c", 5.0, 4)]):
        convert(root / name.upper(), [simple_session(root / f"{name}.nwb", seconds=seconds, seed=i, units=units)],
                sequence_length=50, overlap=0.5, shard_size=4)
        out.append(root / name.upper())
    return out


def keyed(batches) -> list[tuple[str, str]]:
    return [(m["source_file"], k) for b in batches for m, k in zip(b["metadata"], b["__key__"])]


def test_each_epoch_takes_each_source_s_share(sources):
    sizes = [len(WebDatasetLoader(s)) for s in sources]
    loader = WebDatasetLoader(sources, weights=[0.5, 0.3, 0.2], epoch_samples=60, seed=1)
    counts = epoch_counts(sizes, [0.5, 0.3, 0.2], 60)
    assert loader.stream.counts == counts == [30, 18, 12] and len(loader) == 60
    for _ in range(3):
        got = Counter(s["metadata"]["source_file"] for s in loader)
        assert got == {"a.nwb": 30, "b.nwb": 18, "c.nwb": 12}
    natural = WebDatasetLoader(sources)  # no weights: every sample of every source once
    assert Counter(s["metadata"]["source_file"] for s in natural) == dict(zip(["a.nwb", "b.nwb", "c.nwb"], sizes))


def test_sources_with_other_unit_counts_share_a_batch(sources):
    loader = create_webdataset_dataloader(sources, batch_size=12, num_workers=0, weights=[1, 1, 1], seed=2)
    batch = next(iter(loader))
    spikes, mask = batch["spikes"], batch["spikes_mask"]
    assert spikes.shape[-1] == 5 and tuple(mask.shape) == (12, 5)  # the unit axis padded, a mask per unit
    assert len({m["source_file"] for m in batch["metadata"]}) == 3
    for m, units in zip(batch["metadata"], mask.sum(dim=1).tolist()):
        assert units == {"a.nwb": 3, "b.nwb": 5, "c.nwb": 4}[m["source_file"]]


def make(sources, workers, rank=0, world=1):
    return create_webdataset_dataloader(sources, batch_size=3, num_workers=workers, weights=[0.6, 0.25, 0.15],
                                        epoch_samples=50, seed=4, buffer_size=16, rank=rank, world_size=world)


def steps(loaders, count):
    """`count` global steps of loaders (one per rank): their batches' keys, rank by rank."""
    iterators = [iter(x) for x in loaders]
    out = []
    for _ in range(count):
        for it in iterators:
            out += keyed([next(it)])
    return out


@pytest.mark.multiprocess
def test_resume_chained_across_worker_counts_and_world_sizes(sources):
    reference = make(sources, 2)
    epochs = [keyed(reference) for _ in range(2)]
    assert epochs[0] != epochs[1] and len(epochs[0]) == 50
    flat = epochs[0] + epochs[1]
    rng = np.random.default_rng(0)
    for _ in range(3):
        stops = sorted(rng.integers(1, 8, 2).tolist())
        first = make(sources, 0)
        taken = steps([first], stops[0])
        state = first.state_dict()
        pair = [make(sources, 1, r, 2) for r in range(2)]  # world 1 -> 2, another worker count
        for x in pair:
            x.load_state_dict(state)
        taken += steps(pair, stops[1] - stops[0])
        assert pair[0].state_dict() == pair[1].state_dict()
        last = make(sources, 3)  # world 2 -> 1
        last.load_state_dict(pair[0].state_dict())
        taken += keyed(last) + keyed(last)
        assert taken == flat


def test_a_state_of_another_mix_is_refused_unless_asked(sources):
    state = make(sources, 0).state_dict()
    assert len(state["mix"]) == 64
    others = [create_webdataset_dataloader(sources, batch_size=3, num_workers=0, weights=[0.5, 0.25, 0.25],
                                           epoch_samples=50, seed=4, buffer_size=16),
              create_webdataset_dataloader(sources[:2], batch_size=3, num_workers=0, weights=[0.6, 0.4],
                                           epoch_samples=50, seed=4, buffer_size=16),
              create_webdataset_dataloader(sources[0], batch_size=3, num_workers=0, seed=4, buffer_size=16)]
    iterator = iter(make(sources, 0))
    next(iterator)
    for other in others:
        with pytest.raises(ValueError, match="mix"):
            other.load_state_dict(state)
    moved = others[0]
    advanced = make(sources, 0)
    it = iter(advanced)
    for _ in range(3):
        next(it)
    moved.load_state_dict(advanced.state_dict(), allow_new_mix=True)
    assert (moved.stream.epoch, moved.stream.position) == (0, 0)  # the epoch again, with the new mix


def test_mixing_errors_in_words(sources, tmp_path):
    with pytest.raises(ValueError, match="give a list"):
        WebDatasetLoader(sources[0], weights=[1])
    with pytest.raises(ValueError, match="3 weights for 2 sources"):
        WebDatasetLoader(sources[:2], weights=[1, 1, 1])
    with pytest.raises(ValueError, match="version= is not available when mixing"):
        WebDatasetLoader(sources, version=1)
    with pytest.raises(DatasetError, match="timeline"):  # windows need chunked sources
        WebDatasetLoader(sources, window_ms=100)
    with pytest.raises(ValueError, match="decode names fields no dataset of the mix has"):
        WebDatasetLoader(sources, decode={"eeg": {}})


@pytest.mark.multiprocess
def test_a_field_only_some_sources_have_is_present_where_it_is(sources, tmp_path):
    convert(tmp_path / "lfp-only", [simple_session(tmp_path / "x.nwb", seconds=3.0, seed=9)], modalities=["lfp"],
            sequence_length=50, overlap=0.0)
    mix = [sources[0], tmp_path / "lfp-only"]
    loader = create_webdataset_dataloader(mix, batch_size=8, num_workers=2, weights=[1, 1], epoch_samples=24, seed=1)
    seen = Counter()
    for batch in loader:
        present = batch["spikes_present"].tolist()
        assert "lfp_present" not in batch  # every source has lfp
        assert tuple(batch["spikes"].shape[1:]) == (50, 3)  # one source's fixed shape: zeros where absent
        for m, has in zip(batch["metadata"], present):
            seen[m["source_file"]] += 1
            assert has == (m["source_file"] == "a.nwb")
        assert not batch["spikes"][~batch["spikes_present"]].any()
    assert seen == {"a.nwb": 12, "x.nwb": 12}


@pytest.mark.multiprocess
def test_a_mix_on_gloo_ranks_and_resumed_on_one(rank_server, sources, tmp_path):
    """Two real gloo ranks read a mix (its natural proportions) as one process does, step by
    step; stopped after 2 steps, one process with workers reads exactly the rest."""
    from test_loader_distributed import B, BUFFER, SEED, launch

    paths = [str(s) for s in sources]
    single = keyed_keys(create_webdataset_dataloader(paths, batch_size=B, buffer_size=BUFFER, seed=SEED,
                                                     num_workers=0))
    state_path = tmp_path / "state.json"
    ranks = launch(rank_server, tmp_path, 2, path=paths, workers=[0, 2], stop=2, state_path=str(state_path))
    for workers in ("0", "2"):
        steps = zip(*(r["epochs"][workers]["keys"] for r in ranks))
        assert [k for step in steps for batch in step for k in batch] == single
    [resumed] = launch(rank_server, tmp_path, 1, path=paths, workers=[], resume=True, resume_workers=2,
                       state_path=str(state_path))
    stopped = [k for step in zip(*(r["stopped"]["keys"] for r in ranks)) for batch in step for k in batch]
    assert stopped + [k for batch in resumed["resumed"]["keys"] for k in batch] == single


def keyed_keys(loader) -> list[str]:
    return [k for batch in loader for k in batch["__key__"]]
