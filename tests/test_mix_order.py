"""The mixed order over several sources (issue 16, point 2, its core): counts by weights, the
interleave against a brute-force merge, shares in every prefix, repeats and subsets of a source,
and the same work at the end of an epoch as at its start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from neurocodec.loader import mix_order
from neurocodec.loader.mix_order import MixedOrder, apportion, epoch_counts

sys.path.insert(0, str(Path(__file__).parent))
from loader_util import line_events  # noqa: E402


def brute_force(counts: list[int]) -> list[tuple[int, int]]:
    """Every (source, item) sorted by the key (2j+1)/(2c) as an exact fraction, ties by source."""
    items = [(Fraction(2 * j + 1, 2 * c), i, j) for i, c in enumerate(counts) for j in range(c)]
    return [(i, j) for _, i, j in sorted(items)]


@pytest.mark.parametrize("counts", [[7, 3, 11], [1, 1], [5, 0, 5], [6, 4], [1, 1000], [13, 26, 39], [97]])
def test_the_interleave_is_the_exact_merge(counts):
    order = MixedOrder([[c] for c in counts], counts=counts, shuffle=False)
    source, item = order.items(np.arange(order.total))
    assert list(zip(source.tolist(), item.tolist())) == brute_force(counts)
    for i, c in enumerate(counts):
        np.testing.assert_array_equal(order.position_of(i, np.arange(c)), np.flatnonzero(source == i))
    scattered = np.random.default_rng(len(counts)).permutation(order.total)  # not a run: the other search
    s2, j2 = order.items(scattered)
    np.testing.assert_array_equal(s2, source[scattered])
    np.testing.assert_array_equal(j2, item[scattered])


def test_every_prefix_holds_each_share_within_one():
    counts = [700, 300, 1234, 5]
    order = MixedOrder([[c] for c in counts], counts=counts, shuffle=False)
    source, _ = order.items(np.arange(order.total))
    seen = np.cumsum(np.eye(len(counts), dtype=np.int64)[source], axis=0)
    prefix = np.arange(1, order.total + 1)[:, None]
    assert np.all(np.abs(seen - prefix * np.array(counts) / order.total) <= 1.0 + 1e-9)


def test_counts_by_weights_and_hours():
    assert apportion(10, [1, 1, 1]) == [4, 3, 3] and sum(apportion(1001, [0.7, 0.2, 0.1])) == 1001
    assert epoch_counts([100, 50]) == [100, 50]
    assert epoch_counts([100, 50], [0.5, 0.5]) == [75, 75]
    assert epoch_counts([100, 50], [0.5, 0.5], total=10) == [5, 5]
    # equal hours from a source of 1 s windows and one of 10 s windows: ten times the samples
    assert epoch_counts([100, 100], [1, 1], total=110, weight_by="hours", seconds_per_sample=[1.0, 10.0]) == [100, 10]
    with pytest.raises(ValueError, match="weights must be non-negative"):
        epoch_counts([10, 10], [1, -1])
    with pytest.raises(ValueError, match="empty but weighted"):
        epoch_counts([10, 0], [1, 1])
    with pytest.raises(ValueError, match="seconds per sample"):
        epoch_counts([10, 10], [1, 1], weight_by="hours")


def test_repeats_and_subsets_of_a_source():
    shards = [[40, 40, 20], [30, 30], [500]]
    counts = [250, 60, 100]  # source 0 repeated 2.5 times, source 1 once, source 2 a fifth
    seen = {0: Counter(), 1: Counter(), 2: []}
    subsets = []
    for epoch in range(3):
        order = MixedOrder(shards, counts=counts, seed=3, epoch=epoch)
        source, ids = order.locate(np.arange(order.total))
        assert Counter(source.tolist()) == {0: 250, 1: 60, 2: 100}
        for i in (0, 1):
            seen[i].update(ids[source == i].tolist())
        assert set(Counter(ids[source == 0].tolist()).values()) == {2, 3}  # each sample twice, half of them a third time
        mine = ids[source == 2]
        assert len(set(mine.tolist())) == 100 and mine.max() < 500
        subsets.append(set(mine.tolist()))
    assert set(seen[1].values()) == {3} and len(seen[1]) == 60  # every sample once per epoch
    assert len(seen[0]) == 100 and sum(seen[0].values()) == 750
    assert subsets[0] != subsets[1] != subsets[2]  # another fifth each epoch


def test_orders_differ_by_epoch_and_seed_and_agree_in_another_process():
    shards = [[64, 64], [50]]
    a = MixedOrder(shards, seed=1, epoch=0).locate(np.arange(178))
    b = MixedOrder(shards, seed=1, epoch=1).locate(np.arange(178))
    c = MixedOrder(shards, seed=2, epoch=0).locate(np.arange(178))
    assert not np.array_equal(a[1], b[1]) and not np.array_equal(a[1], c[1])
    code = ("import json, numpy as np; from neurocodec.loader.mix_order import MixedOrder;"
            "s, i = MixedOrder([[64, 64], [50]], seed=1, epoch=0).locate(np.arange(178));"
            "print(json.dumps([s.tolist(), i.tolist()]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONHASHSEED": "7"})
    assert json.loads(done.stdout) == [a[0].tolist(), a[1].tolist()]


def test_the_end_of_a_long_epoch_costs_what_its_start_costs():
    counts = [700_000_000, 250_000_000, 50_000_000]
    order = MixedOrder([[c] for c in counts], counts=counts, shuffle=False)
    start = np.arange(0, 32)
    end = np.arange(int(order.total * 0.9), int(order.total * 0.9) + 32)
    work = [line_events(mix_order, lambda p=p: order.items(p)) for p in (start, end)]
    assert work[1] <= 2 * work[0] < 2000  # a few hundred lines of Python either way, not a replay
    source, item = order.items(end)
    back = [int(order.position_of(int(s), np.array([j]))[0]) for s, j in zip(source, item)]
    assert back == end.tolist()
