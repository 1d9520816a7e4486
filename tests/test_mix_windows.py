"""A mix of datasets with load-time windows and splits (issue 16): each source cuts its own
windows and reads its own split's part, the mix orders what they hold, resume stays exact, and
weights by hours use each source's sample length."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from neurocodec import WebDatasetLoader, create_webdataset_dataloader, make_split
from neurocodec.errors import DatasetError
from neurocodec.loader.mix_order import epoch_counts

sys.path.insert(0, str(Path(__file__).parent))
from test_window_loader import convert, numpy_of, rich_session  # noqa: E402


@pytest.fixture(scope="module")
def chunked(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("mix-windows")
    a = convert(root / "A", [rich_session(root / "a.nwb", t0=0.0, seconds=3.0, seed=1)], chunk_seconds=0.5)
    b = convert(root / "B", [rich_session(root / "b.nwb", t0=40.0, seconds=2.0, seed=2),
                             rich_session(root / "c.nwb", t0=7.0, seconds=1.5, seed=3)], chunk_seconds=0.5)
    for path in (a, b):
        make_split(path, by="time", fractions={"train": 0.75, "test": 0.25})
    return [a, b]


def windows(samples) -> dict[tuple[str, float], dict]:
    return {(s["metadata"]["session"], round(s["metadata"]["start_time"], 6)): numpy_of(s) for s in samples}


def test_each_source_cuts_its_own_windows(chunked):
    for mode in ("grid", "jitter"):
        mix = WebDatasetLoader(chunked, window_ms=300, window_mode=mode, seed=3)
        alone = [WebDatasetLoader(p, window_ms=300, window_mode=mode, seed=3) for p in chunked]
        for epoch in range(2):  # jittered windows move between epochs, alike in the mix and alone
            got = windows(mix)
            expected = {k: v for loader in alone for k, v in windows(loader).items()}
            assert got.keys() == expected.keys() and len(got) == sum(mix.stream.counts_of(epoch) or [0])
            for key, sample in got.items():
                assert all(np.array_equal(sample[f], expected[key][f]) for f in ("spikes", "lfp", "behavior"))


def test_weights_hold_every_epoch_with_jittered_windows(chunked):
    mix = WebDatasetLoader(chunked, window_ms=200, weights=[0.25, 0.75], epoch_samples=40, seed=1)
    for _ in range(3):
        got = Counter("A" if s["metadata"]["session"].startswith("a-") else "B" for s in mix)
        assert got == {"A": 10, "B": 30}


def test_a_split_in_a_mix_reads_each_source_s_part(chunked):
    train = windows(WebDatasetLoader(chunked, window_ms=250, split="train", seed=2))
    test = windows(WebDatasetLoader(chunked, window_ms=250, split="test", seed=2))
    assert {k[0][0] for k in train} == {"a", "b", "c"} and test
    for session, start in test:  # no test window overlaps a train window of its session
        assert not any(s == session and abs(t - start) < 0.25 - 1e-9 for s, t in train)
    stored = windows(WebDatasetLoader(chunked, split="train", shuffle=False))  # stored chunks, a part each
    alone = {k for p in chunked for k in windows(WebDatasetLoader(p, split="train", shuffle=False))}
    assert set(stored) == alone


def test_a_windowed_mix_resumes_exactly_with_other_workers(chunked):
    options = dict(batch_size=5, window_ms=300, weights=[0.5, 0.5], epoch_samples=30, seed=7, split="train")
    spans = lambda batches: [(m["session"], m["start_time"]) for b in batches for m in b["metadata"]]  # noqa: E731
    full = spans(create_webdataset_dataloader(chunked, num_workers=0, **options))
    first = create_webdataset_dataloader(chunked, num_workers=0, **options)
    it = iter(first)
    head = spans([next(it) for _ in range(2)])
    state = first.state_dict()
    del it
    resumed = create_webdataset_dataloader(chunked, num_workers=2, **options)
    resumed.load_state_dict(state)
    assert head + spans(resumed) == full
    other = create_webdataset_dataloader(chunked, num_workers=0, **{**options, "window_ms": 200})
    with pytest.raises(ValueError, match="another mix"):
        other.load_state_dict(state)


def test_hours_weigh_each_source_by_its_sample_length(chunked, tmp_path):
    stored = convert(tmp_path / "stored", [rich_session(tmp_path / "d.nwb", t0=0.0, seconds=2.0, seed=4)],
                     sequence_length=20, overlap=0.0)  # windows of 0.2 s
    mix = WebDatasetLoader([chunked[0], stored], weights=[1, 1], weight_by="hours", epoch_samples=28)
    assert mix.stream.counts == epoch_counts([6, 10], [1, 1], 28, "hours", [0.5, 0.2]) == [8, 20]
    windowed = WebDatasetLoader(chunked, window_ms=100, weights=[1, 1], weight_by="hours", epoch_samples=20,
                                window_mode="grid")
    assert windowed.stream.counts == [10, 10]  # the same window everywhere: hours are samples


def test_a_source_without_the_split_is_named(chunked, tmp_path):
    plain = convert(tmp_path / "plain", [rich_session(tmp_path / "e.nwb", t0=0.0, seconds=1.0, seed=5)],
                    chunk_seconds=0.5)
    with pytest.raises(DatasetError, match="plain.*no split 'default'"):
        WebDatasetLoader([chunked[0], plain], split="train")


@pytest.mark.parametrize("workers", [1, 2])
def test_each_url_source_prefetches_the_shards_its_windows_read(chunked, workers):
    """The wish list a mix builds for each source (as if it were at a URL) names exactly the
    shards of the chunks that source's windows read in this worker's next batches."""
    from neurocodec.loader.lookahead import ShardLookahead
    from neurocodec.loader.mix_lookahead import SourceIds

    batch = 4
    loader = WebDatasetLoader(chunked, window_ms=300, weights=[0.4, 0.6], epoch_samples=24, seed=5,
                              batch_size=batch, split="train")
    stream = loader.stream
    for epoch in range(2):
        loader.set_epoch(epoch)
        order, plan = stream.order(), stream.plan()
        read = [s["metadata"] for s in WebDatasetLoader(chunked, window_ms=300, weights=[0.4, 0.6], epoch_samples=24,
                                                        seed=5, batch_size=batch, split="train", epoch=epoch)]
        for i, part in enumerate(stream.parts):
            starts = np.array([s.first_sample for s in part.manifest.shards])
            sessions = {k for k in part.manifest.extra["sessions"]}
            for worker in range(workers):
                stored = part._lookahead(SourceIds(order, i), plan, worker, workers).stored
                ahead = ShardLookahead(SourceIds(order, i), plan, worker, workers, starts, samples=batch,
                                       stored=stored)
                for k in range(worker, len(plan), workers):
                    chunks = [c for m in read[k * batch:(k + 1) * batch] if m["session"] in sessions
                              for c in m["window"]["chunks"]]
                    assert sorted(ahead.shards_from(k)) == sorted(set(np.searchsorted(starts, chunks, "right") - 1))
