"""Transforms in workers (issue 15, point 4): `transform=` on every loader runs per sample where it
is decoded, with a generator seeded from (seed, epoch, global sample id), so augmented batches
are the same for any worker count or world size and after a resume, and differ between epochs;
and the built-in augmentations, checked against numpy."""

from __future__ import annotations

import functools
import textwrap
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from loader_util import key_id, run_ranks

from neurocodec import (
    ChannelMask,
    Compose,
    Dataset,
    RandomAccessWebDataset,
    ResumableWebDatasetLoader,
    SpikeTimeJitter,
    TimeCrop,
    TransformError,
    UnitDropout,
    WebDatasetLoader,
    WebDatasetWriter,
    create_webdataset_dataloader,
)
from neurocodec.plugin import SpikeEvents

N, SHARD, BATCH, SEED = 37, 7, 4, 11
HZ, UNITS, BINS, BIN_MS, CHANNELS, LFP_HZ = 30_000, 5, 20, 10, 6, 1000
WINDOW_S = BINS * BIN_MS / 1000  # 0.2 s
WINDOW_TICKS = HZ * BINS * BIN_MS // 1000
LFP_LEN = int(WINDOW_S * LFP_HZ)
EVENTS = {"spikes": {"as": "events"}}
# 3 workers on a 2-core machine is the point of the test, not a mistake.
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


def window(i: int) -> dict[str, Any]:
    """Sample i: its id, spike events (ties, both window edges, an empty window) and an LFP."""
    rng = np.random.default_rng(1000 + i)
    n = 0 if i % 9 == 4 else int(rng.integers(20, 80))
    ticks = rng.integers(0, WINDOW_TICKS, n)
    if n:
        ticks[:3] = [0, WINDOW_TICKS - 1, 5]
    units = rng.integers(0, UNITS, n)
    order = np.lexsort((units, ticks))
    return {"x": np.array([i, 7 * i + 1], dtype=np.int64),
            "spikes": SpikeEvents.from_ticks(ticks[order], units[order], UNITS, HZ),
            "lfp": rng.standard_normal((LFP_LEN, CHANNELS)).astype(np.float32)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("transforms") / "ds"
    codecs = {"spikes": {"id": "spike-events", "bins": BINS, "bin_size_ms": BIN_MS}, "lfp": {"id": "npy"}}
    with WebDatasetWriter(path, shard_size=SHARD, codecs=codecs, fsync=False) as writer:
        for i in range(N):
            writer.write_sample(window(i), metadata={"id": i})
    return path


# -- transforms as a user writes them (module level: they pickle by reference) --------------------

def draw(sample: dict[str, Any], rng: np.random.Generator, *, scale: int = 1 << 40) -> dict[str, Any]:
    """Records the first draw of the sample's generator beside the sample."""
    out = dict(sample)
    out["draw"] = np.array([rng.integers(0, scale)], dtype=np.int64)
    return out


AUGMENT = Compose([draw, UnitDropout(("spikes",), p=0.3), ChannelMask(("lfp",), p=0.3),
                   SpikeTimeJitter(window_s=WINDOW_S, sigma_s=0.004)])


class FailOn:
    """Raises on the samples whose id (from `x`) is listed."""

    def __init__(self, ids: set[int]) -> None:
        self.ids = ids

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        if int(sample["x"][0]) in self.ids:
            raise RuntimeError("bad electrode")
        return sample


def expected(path: Path, sample_id: int, epoch: int, seed: int = SEED, transform=AUGMENT) -> dict[str, Any]:
    """Sample `sample_id` transformed with the generator the docs promise, computed here."""
    with Dataset(path, decode=EVENTS) as ds:
        sample = ds[sample_id]
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 2, sample_id]))
    return transform(sample, rng)


def rows(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """A collated batch back as samples (tensors as numpy)."""
    out = []
    for b, key in enumerate(batch["__key__"]):
        out.append({"__key__": key, "x": batch["x"][b].numpy(), "draw": batch["draw"][b].numpy(),
                    "lfp": batch["lfp"][b].numpy(), "spikes": batch["spikes"][b]})
    return out


def assert_sample(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["__key__"] == want["__key__"]
    for name in ("x", "draw", "lfp"):
        np.testing.assert_array_equal(np.asarray(got[name]), want[name], err_msg=f"{want['__key__']} {name}")
    assert got["spikes"] == want["spikes"], want["__key__"]


def assert_batches_equal(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for name in x:
            if isinstance(x[name], torch.Tensor):
                assert torch.equal(x[name], y[name]), name
            else:
                assert x[name] == y[name], name


def loader(path: Path, workers: int, **kw: Any):
    kw = {"batch_size": BATCH, "seed": SEED, "buffer_size": 16, "decode": EVENTS, "transform": AUGMENT, **kw}
    return create_webdataset_dataloader(path, num_workers=workers, **kw)


# -- the DataLoader -------------------------------------------------------------------------------

@pytest.mark.multiprocess
def test_augmented_batches_are_identical_for_any_worker_count(dataset):
    runs = {w: list(loader(dataset, w)) for w in (0, 1, 2, 3)}
    for w in (1, 2, 3):
        assert_batches_equal(runs[w], runs[0])
    seen = []
    for batch in runs[0]:
        for got in rows(batch):
            i = key_id(got["__key__"])
            assert_sample(got, expected(dataset, i, epoch=0))
            seen.append(i)
    assert sorted(seen) == list(range(N))
    # The augmentation did something: units dropped, channels masked, spikes moved.
    firsts = [expected(dataset, i, 0) for i in range(5)]
    assert any(not np.array_equal(f["lfp"], window(i)["lfp"]) for i, f in enumerate(firsts))
    assert any(f["spikes"] != window(i)["spikes"] for i, f in enumerate(firsts))


@pytest.mark.multiprocess
@pytest.mark.parametrize("before, after", [(2, 3), (3, 0), (0, 2)])
def test_resume_mid_epoch_with_another_worker_count_gives_the_same_batches(dataset, before, after):
    reference = list(loader(dataset, 0, epoch=1))
    first = loader(dataset, before, epoch=1)
    taken = list(islice(iter(first), 3))
    assert_batches_equal(taken, reference[:3])
    state = first.state_dict()
    second = loader(dataset, after)
    second.load_state_dict(state)
    assert_batches_equal(list(second), reference[3:])


def test_epochs_differ_and_each_epoch_is_a_pure_function_of_its_number(dataset):
    one = loader(dataset, 0, shuffle=False)
    epoch0, epoch1 = list(one), list(one)  # the second pass is epoch 1
    assert_batches_equal(list(loader(dataset, 0, shuffle=False, epoch=1)), epoch1)
    draws0 = torch.cat([b["draw"] for b in epoch0])
    draws1 = torch.cat([b["draw"] for b in epoch1])
    assert (draws0 != draws1).all()
    assert [k for b in epoch0 for k in b["__key__"]] == [k for b in epoch1 for k in b["__key__"]]
    # Another seed, other draws.
    other = torch.cat([b["draw"] for b in loader(dataset, 0, shuffle=False, seed=SEED + 1)])
    assert (other != draws0).all()


def test_every_rank_transforms_its_samples_as_a_single_process_does(dataset):
    for world in (2, 3):
        seen = []
        for rank in range(world):
            for batch in loader(dataset, 0, rank=rank, world_size=world, drop_last=True):
                for got in rows(batch):
                    assert_sample(got, expected(dataset, key_id(got["__key__"]), epoch=0))
                    seen.append(got["__key__"])
        assert len(seen) == len(set(seen)) == N - N % (BATCH * world)


RANK_SCRIPT = textwrap.dedent('''
    import json, sys
    from datetime import timedelta

    import numpy as np
    import torch.distributed as dist

    from neurocodec import Compose, UnitDropout, create_webdataset_dataloader

    def draw(sample, rng):
        out = dict(sample)
        out["draw"] = np.array([rng.integers(0, 1 << 40)], dtype=np.int64)
        return out

    cfg = json.loads(sys.argv[1])
    rank = int(sys.argv[2])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{cfg['port']}", rank=rank,
                            world_size=cfg["world"], timeout=timedelta(seconds=90))
    loader = create_webdataset_dataloader(cfg["path"], batch_size=cfg["batch"], num_workers=2, seed=cfg["seed"],
                                          buffer_size=16, decode={"spikes": {"as": "events"}},
                                          transform=Compose([draw, UnitDropout(("spikes",), p=0.3)]))
    got = {}
    for batch in loader:
        for key, d, events in zip(batch["__key__"], batch["draw"].tolist(), batch["spikes"]):
            got[key] = [d[0], events.times.tolist(), events.units.tolist()]
    dist.barrier()
    dist.destroy_process_group()
    with open(cfg["out"] + f".{rank}", "w") as f:
        json.dump(got, f)
''')


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(300)
def test_gloo_ranks_augment_each_sample_as_one_process_does(rank_server, dataset, tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    outs = run_ranks(script, {"path": str(dataset), "batch": BATCH, "seed": SEED}, 2, tmp_path / "out", timeout=240,
                     server=rank_server)
    assert not set(outs[0]) & set(outs[1]) and len(outs[0]) + len(outs[1]) == N  # N % (2 * BATCH) == 5: no repeats
    transform = Compose([draw, UnitDropout(("spikes",), p=0.3)])
    for key, (d, times, units) in {**outs[0], **outs[1]}.items():
        want = expected(dataset, key_id(key), epoch=0, transform=transform)
        assert d == int(want["draw"][0]), key
        assert (times, units) == (want["spikes"].times.tolist(), want["spikes"].units.tolist()), key


# -- the other loaders ----------------------------------------------------------------------------

@pytest.mark.multiprocess
def test_webdataset_loader_in_a_user_dataloader_and_the_resumable_loader(dataset, tmp_path):
    plain = WebDatasetLoader(dataset, seed=SEED, batch_size=1, decode=EVENTS, transform=AUGMENT, epoch=2)
    dl = torch.utils.data.DataLoader(plain, batch_size=None, num_workers=2)
    got = list(dl)
    assert len(got) == N
    for sample in got:
        want = expected(dataset, key_id(sample["__key__"]), epoch=2)
        assert_sample({**sample, "x": sample["x"].numpy(), "draw": sample["draw"].numpy(),
                       "lfp": sample["lfp"].numpy()}, want)
    resumable = ResumableWebDatasetLoader(dataset, tmp_path / "ckpt.json", checkpoint_interval=5, seed=SEED,
                                          decode=EVENTS, transform=AUGMENT)
    it = iter(resumable)
    head = [next(it) for _ in range(12)]
    del it
    again = ResumableWebDatasetLoader(dataset, tmp_path / "ckpt.json", seed=SEED, decode=EVENTS, transform=AUGMENT)
    rest = list(again)
    assert [s["__key__"] for s in head[:10]] + [s["__key__"] for s in rest] == \
        [s["__key__"] for s in WebDatasetLoader(dataset, seed=SEED, decode=EVENTS)]
    for sample in head + rest:
        assert torch.equal(sample["draw"], torch.from_numpy(expected(dataset, key_id(sample["__key__"]), 0)["draw"]))


@pytest.mark.multiprocess
def test_random_access_dataset_seeds_by_index_and_set_epoch(dataset):
    ds = RandomAccessWebDataset(dataset, decode=EVENTS, transform=AUGMENT, seed=SEED)
    assert ds.epoch == 0
    for i in (0, 5, N - 1):
        sample = ds[i]
        assert_sample({**sample, "x": sample["x"].numpy(), "draw": sample["draw"].numpy(),
                       "lfp": sample["lfp"].numpy()}, expected(dataset, i, epoch=0))
    assert torch.equal(ds[-1]["draw"], ds[N - 1]["draw"])
    ds.set_epoch(3)
    sampler = torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(0))
    dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, sampler=sampler)
    for sample in dl:
        i = key_id(sample["__key__"])
        assert torch.equal(sample["draw"], torch.from_numpy(expected(dataset, i, epoch=3)["draw"]))
    with pytest.raises(ValueError, match="epoch"):
        ds.set_epoch(-1)


# -- errors ---------------------------------------------------------------------------------------

@pytest.mark.multiprocess
@pytest.mark.parametrize("workers", [0, 2])
def test_a_raising_transform_names_the_sample(dataset, workers):
    with pytest.raises(TransformError, match=r"sample 13 \(key 'sample_000000014'\).*epoch 0.*bad electrode"):
        list(create_webdataset_dataloader(dataset, batch_size=BATCH, num_workers=workers, shuffle=False,
                                          transform=FailOn({13})))
    with pytest.raises(TransformError, match="sample 2 .*bad electrode") as caught:
        RandomAccessWebDataset(dataset, transform=FailOn({2}))[2]
    assert (caught.value.sample, caught.value.key) == (2, "sample_000000003")
    with pytest.raises(TransformError, match="returned NoneType for sample 0 "):
        RandomAccessWebDataset(dataset, transform=lambda s, r: None)[0]


@pytest.mark.multiprocess
@pytest.mark.parametrize("workers", [0, 2])
def test_on_error_skip_leaves_out_samples_whose_transform_raises(dataset, workers, caplog):
    bad = {3, 13, 14, 30}
    dl = create_webdataset_dataloader(dataset, batch_size=BATCH, num_workers=workers, seed=SEED, buffer_size=16,
                                      transform=FailOn(bad), on_error="skip")
    ids = [int(v) for b in dl for v in b["x"][:, 0]]
    assert sorted(ids) == sorted(set(range(N)) - bad)
    plain = [int(v) for b in create_webdataset_dataloader(dataset, batch_size=BATCH, num_workers=0, seed=SEED,
                                                          buffer_size=16) for v in b["x"][:, 0]]
    assert ids == [i for i in plain if i not in bad]
    assert dl.state_dict()["skipped"] == len(bad)


def test_transform_must_be_callable_and_picklable_for_spawn(dataset):
    with pytest.raises(TypeError, match="transform must be a callable"):
        create_webdataset_dataloader(dataset, num_workers=0, transform="noise")
    with pytest.raises(TypeError, match="cannot be pickled.*spawn.*module level"):
        create_webdataset_dataloader(dataset, num_workers=2, multiprocessing_context="spawn",
                                     transform=lambda s, r: s)
    create_webdataset_dataloader(dataset, num_workers=2, multiprocessing_context="fork", transform=lambda s, r: s)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_spawned_workers_run_a_partial_and_an_attrs_class(dataset):
    transform = Compose([functools.partial(draw, scale=1 << 20), UnitDropout(("spikes",), p=0.5)])
    reference = list(loader(dataset, 0, transform=transform))
    spawned_loader = loader(dataset, 2, transform=transform, multiprocessing_context="spawn")
    spawned_loader.build_while_workers_start = False          # the workers build every batch but the first
    spawned = list(spawned_loader)
    assert_batches_equal(spawned, reference)
    assert int(torch.cat([b["draw"] for b in reference]).max()) < 1 << 20


# -- the built-in augmentations, against numpy -----------------------------------------------------

def frozen(array: np.ndarray) -> np.ndarray:
    """A read-only copy, as decoded arrays are (views of the shard)."""
    out = np.array(array)
    out.flags.writeable = False
    return out


def binned(events: SpikeEvents, per_bin: int, bins: int) -> np.ndarray:
    """Counts by numpy alone: bin k holds ticks in [k*per_bin, (k+1)*per_bin)."""
    counts = np.zeros((bins, events.unit_count), np.int32)
    np.add.at(counts, (np.rint(events.times * events.tick_hz).astype(np.int64) // per_bin, events.units), 1)
    return counts


def test_unit_dropout_drops_the_same_units_from_counts_and_events():
    spikes = window(5)["spikes"]
    counts = frozen(binned(spikes, HZ * BIN_MS // 1000, BINS) + 1)  # every entry non-zero
    sample = {"counts": counts, "spikes": spikes, "x": frozen([5, 36])}
    for seed in range(6):
        out = UnitDropout(("counts", "spikes"), p=0.5)(sample, np.random.default_rng(seed))
        keep = np.random.default_rng(seed).random(UNITS) >= 0.5
        assert out["counts"].dtype == np.int32 and out["counts"].shape == counts.shape
        np.testing.assert_array_equal(out["counts"][:, keep], counts[:, keep])
        assert (out["counts"][:, ~keep] == 0).all()
        kept = keep[spikes.units]
        assert out["spikes"] == SpikeEvents(spikes.times[kept], spikes.units[kept], UNITS, HZ)
        assert out["x"] is sample["x"] and sample["spikes"] is spikes
    np.testing.assert_array_equal(counts, binned(spikes, HZ * BIN_MS // 1000, BINS) + 1)  # input unchanged
    everything = UnitDropout(("counts", "spikes"), p=1.0)(sample, np.random.default_rng(0))
    assert not everything["counts"].any() and len(everything["spikes"]) == 0
    nothing = UnitDropout(("counts", "spikes"), p=0.0)(sample, np.random.default_rng(0))
    np.testing.assert_array_equal(nothing["counts"], counts)
    assert nothing["spikes"] == spikes
    with pytest.raises(ValueError, match="differ"):
        UnitDropout(("counts", "lfp"))({"counts": counts, "lfp": np.zeros((4, UNITS + 1))}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="probability"):
        UnitDropout(p=1.5)


def test_channel_mask_sets_whole_channels_to_the_value():
    lfp = frozen(window(3)["lfp"])
    for seed in range(6):
        out = ChannelMask("lfp", p=0.4, value=-7.0)({"lfp": lfp}, np.random.default_rng(seed))
        keep = np.random.default_rng(seed).random(CHANNELS) >= 0.4
        assert out["lfp"].dtype == np.float32
        np.testing.assert_array_equal(out["lfp"][:, keep], lfp[:, keep])
        assert (out["lfp"][:, ~keep] == -7.0).all()
    np.testing.assert_array_equal(lfp, window(3)["lfp"])


def test_spike_time_jitter_stays_sorted_on_the_tick_grid_and_inside_the_window():
    spikes = window(7)["spikes"]  # spikes at tick 0 and at the window's last tick included
    last = WINDOW_TICKS - 1
    jitter = SpikeTimeJitter(window_s=WINDOW_S, sigma_s=0.002)
    shifts = []
    for seed in range(20):
        out = jitter({"spikes": spikes}, np.random.default_rng(seed))["spikes"]
        ticks = np.rint(out.times * HZ)
        assert np.array_equal(ticks / HZ, out.times) and out.tick_hz == HZ and out.unit_count == UNITS
        assert ticks.min() >= 0 and ticks.max() <= last and np.all(np.diff(out.times) >= 0)
        assert sorted(out.units.tolist()) == sorted(spikes.units.tolist())
        # One spike alone at each edge is reflected back in by exactly its draw.
        d = int(np.rint(np.random.default_rng(seed).normal(0, 0.002) * HZ))
        for tick, want in ((0, abs(d)), (last, last - abs(d)), (WINDOW_TICKS // 2, WINDOW_TICKS // 2 + d)):
            alone = SpikeEvents.from_ticks(np.array([tick]), np.array([1]), UNITS, HZ)
            moved = jitter({"spikes": alone}, np.random.default_rng(seed))["spikes"]
            assert moved.times[0] == want / HZ, (seed, tick, d)
        shifts.append(d)
    assert 0.5 * 0.002 * HZ < np.std(shifts) < 1.5 * 0.002 * HZ
    with pytest.raises(TypeError, match="not SpikeEvents"):
        jitter({"spikes": np.zeros((BINS, UNITS))}, np.random.default_rng(0))


def test_time_crop_cuts_the_same_stretch_from_every_field():
    spikes = window(8)["spikes"]
    per_bin = HZ * BIN_MS // 1000
    sample = {"counts": frozen(binned(spikes, per_bin, BINS)), "lfp": frozen(window(8)["lfp"]), "spikes": spikes}
    crop = TimeCrop(("counts", "lfp", "spikes"), window_s=WINDOW_S, length_s=0.1)
    starts = set()
    for seed in range(80):
        out = crop(sample, np.random.default_rng(seed))
        s = int(np.random.default_rng(seed).integers(0, 11))  # 10 ms steps: starts 0, 10, ..., 100 ms
        starts.add(s)
        np.testing.assert_array_equal(out["counts"], sample["counts"][s:s + 10])
        np.testing.assert_array_equal(out["lfp"], sample["lfp"][10 * s:10 * s + 100])
        ticks = np.rint(spikes.times * HZ).astype(np.int64)
        inside = (ticks >= s * per_bin) & (ticks < (s + 10) * per_bin)
        assert out["spikes"] == SpikeEvents.from_ticks(ticks[inside] - s * per_bin, spikes.units[inside], UNITS, HZ)
        np.testing.assert_array_equal(binned(out["spikes"], per_bin, 10), out["counts"])  # the fields agree
    assert starts == set(range(11))
    coarse = TimeCrop(("counts", "lfp"), window_s=WINDOW_S, length_s=0.1, step_s=0.05)
    for seed in range(10):
        k = int(np.random.default_rng(seed).integers(0, 3))  # starts 0, 50 and 100 ms
        np.testing.assert_array_equal(coarse(sample, np.random.default_rng(seed))["lfp"],
                                      sample["lfp"][50 * k:50 * k + 100])
    with pytest.raises(ValueError, match="'counts' would start at .* samples and span 10.5"):
        TimeCrop(("counts", "lfp"), window_s=WINDOW_S, length_s=0.105)(sample, np.random.default_rng(0))
    with pytest.raises(ValueError, match="longer than window_s"):
        TimeCrop("lfp", window_s=0.1, length_s=0.2)


def test_built_in_augmentations_pickle_and_compare_by_parameters():
    import pickle

    for t in (UnitDropout(("spikes",), 0.2), ChannelMask("lfp"), SpikeTimeJitter(window_s=1.0),
              TimeCrop("lfp", window_s=1.0, length_s=0.5), AUGMENT):
        assert pickle.loads(pickle.dumps(t)) == t
    assert UnitDropout("spikes").fields == ("spikes",)


@pytest.mark.multiprocess
def test_a_worker_s_error_stops_the_workers_at_once(dataset):
    """The error reaches the training loop with the workers already stopped: before, the
    DataLoader's iterator stayed alive in the traceback and torch stopped its workers (5 s each)
    only when the garbage collector reached it, in whatever test ran next."""
    import gc
    import multiprocessing

    others = set(multiprocessing.active_children())  # (a worker of an earlier test may still be exiting)
    gc.disable()
    try:
        with pytest.raises(TransformError):
            list(create_webdataset_dataloader(dataset, batch_size=BATCH, num_workers=2, shuffle=False,
                                              transform=FailOn({13})))
        assert set(multiprocessing.active_children()) <= others
    finally:
        gc.enable()
