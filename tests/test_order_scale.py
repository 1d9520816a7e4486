"""The epoch order at scale (issue 18, point 5): order version 2 as docs/order.md specifies it,
its Feistel bijection, seeking epochs of 10^9+ samples, the same order in every process, and
states saved under another order version refused. No wall-clock assertions.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loader_util import DatasetCache

from neurocodec import EpochOrder, LoaderState, WebDatasetLoader
from neurocodec.loader import order as order_module
from neurocodec.loader.feistel import Feistel
from neurocodec.loader.order import ORDER_VERSION

ROOT = Path(__file__).resolve().parents[1]
keys_st = st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=8).map(tuple)


def reference() -> dict:
    """The reference code of docs/order.md, section 4, run as written."""
    text = (ROOT / "docs" / "order.md").read_text()
    section = text[text.index("## 4. Reference code"):text.index("## 5.")]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    names: dict = {}
    exec(compile(code, "docs/order.md", "exec"), names)  # noqa: S102 - our own documentation
    return names


REFERENCE = reference()


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 60), min_size=1, max_size=8), seed=st.integers(0, 2**32 - 1),
       epoch=st.integers(0, 9), buffer=st.integers(1, 90), chunk=st.one_of(st.none(), st.integers(1, 40)),
       shuffle=st.booleans(), page=st.sampled_from([1, 3, 16, order_module.PAGE]))
def test_the_documented_reference_code_is_the_order(sizes, seed, epoch, buffer, chunk, shuffle, page):
    """docs/order.md specifies the order well enough to reimplement: its code gives EpochOrder's
    ids, however many slots are evaluated together (small pages: blocks across pages, chunks
    longer than a page)."""
    total = sum(sizes)
    with patch.object(order_module, "PAGE", page):
        got = EpochOrder(sizes, seed=seed, epoch=epoch, shuffle=shuffle, buffer_size=buffer, chunk_size=chunk)
        ids = got.ids(0, total).tolist()
    expected = REFERENCE["epoch_order"](total, seed, epoch, shuffle, buffer, chunk)
    assert ids == expected
    assert sorted(expected) == list(range(total))


@settings(max_examples=150, deadline=None)
@given(n=st.integers(0, 600), keys=keys_st)
def test_feistel_is_a_bijection_and_matches_the_reference(n, keys):
    values = Feistel(n, keys)(np.arange(n))
    assert sorted(values.tolist()) == list(range(n))
    assert values[:20].tolist() == [REFERENCE["bijection"](x, n, list(keys)) for x in range(min(n, 20))]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2**32, 2**62), keys=keys_st, data=st.data())
def test_feistel_on_huge_domains_stays_in_range_without_collisions(n, keys, data):
    xs = np.array(sorted(set(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=50)))), dtype=np.int64)
    ys = Feistel(n, keys)(xs)
    assert len(set(ys.tolist())) == len(xs) and int(ys.min()) >= 0 and int(ys.max()) < n
    assert ys[:3].tolist() == [REFERENCE["bijection"](int(x), n, list(keys)) for x in xs[:3]]


def test_feistel_rejects_bad_domains_and_keys():
    for n, keys in ((-1, (1,)), (2**62 + 1, (1,)), (10, ()), (10, (2**64,))):
        with pytest.raises(ValueError):
            Feistel(n, keys)


@pytest.mark.parametrize("total,chunk", [(10**9, None), (10**12 + 7, 1), (3 * 10**9 + 5, 50)])
def test_seeking_a_huge_epoch_touches_one_block(total, chunk):
    """Positions anywhere in an epoch of 10^9 or 10^12 samples: a block is its run of the chunk
    order (buffer_size=1 gives that run unshuffled), pieces agree with take(), ids in range."""
    sizes = np.full(1000, total // 1000, dtype=np.int64)
    sizes[-1] += total - int(sizes.sum())
    order = EpochOrder(sizes, seed=7, epoch=3, buffer_size=1000, chunk_size=chunk)
    runs = EpochOrder(sizes, seed=7, epoch=3, buffer_size=1, chunk_size=order.chunk_size)
    for block in (0, total // 2000, int(total * 0.9) // 1000, (total - 1) // 1000):
        lo, hi = block * 1000, min(total, block * 1000 + 1000)
        ids = order.ids(lo, hi)
        assert sorted(ids.tolist()) == sorted(runs.ids(lo, hi).tolist())
        assert len(set(ids.tolist())) == hi - lo and 0 <= int(ids.min()) and int(ids.max()) < total
        picks = np.array([lo, hi - 1, (lo + hi) // 2])
        assert order.take(picks).tolist() == ids[picks - lo].tolist()
    chunks = {int(i) // order.chunk_size for i in order.ids(5000, 6000).tolist()}
    assert len(chunks) >= 1000 // order.chunk_size  # a block mixes many chunks from all over the dataset


PINNED = [  # (settings, SHA-256 of the epoch's ids as little-endian int64): order version 2.
    # A change here changes the order: give it a new ORDER_VERSION and document it in docs/order.md.
    (dict(sizes=[7, 13, 1000, 3], seed=5, epoch=2, buffer_size=50),
     "e32d90688b142542a34b5f3c9a5df2800871cd8e92d866eab6dbde85fa1675b6"),
    (dict(sizes=[100] * 40, seed=0, epoch=0, buffer_size=1000),
     "a61d16943fef377d0a54523c0ca129a139286437eed0320cd8c60243415b569a"),
    (dict(sizes=[61, 1], seed=2**32 - 1, epoch=9, buffer_size=7, chunk_size=3),
     "702eb1146b1da3ab0394e25a95c95910d87f9363bac774da3a3ab35cb16a0801"),
]
DIGEST = """
import hashlib, json, sys
import numpy as np
from neurocodec import EpochOrder
def digest(kw):
    order = EpochOrder(kw.pop("sizes"), **kw)
    return hashlib.sha256(order.ids(0, order.total).astype("<i8").tobytes()).hexdigest()
huge = EpochOrder(np.full(10**6, 1000), seed=3, epoch=1).ids(9 * 10**8, 9 * 10**8 + 64).tolist()
print(json.dumps([[digest(kw) for kw in json.loads(sys.argv[1])], huge]))
"""


def _computed(env: dict | None = None) -> list:
    """[the digests of PINNED's settings, the ids at 90% of an epoch of 10^9] from a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", DIGEST, json.dumps([kw for kw, _ in PINNED])], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_order_version_2_is_pinned_and_the_same_in_every_process():
    """The order is integer arithmetic on the settings: this process and others (string hashing
    randomised differently) compute the same ids, at small sizes and seeking 10^9 samples."""
    assert ORDER_VERSION == 2
    names: dict = {}
    exec(DIGEST.split("huge =")[0], names)  # noqa: S102 - the digest function above
    here = [[names["digest"](dict(kw)) for kw, _ in PINNED],
            EpochOrder(np.full(10**6, 1000), seed=3, epoch=1).ids(9 * 10**8, 9 * 10**8 + 64).tolist()]
    assert here[0] == [digest for _, digest in PINNED]
    for hash_seed in ("1", "12345"):
        assert _computed({**os.environ, "PYTHONHASHSEED": hash_seed}) == here


# --------------------------------------------------------------------------- states


def _state(**changes) -> dict:
    doc = {"version": 1, "order_version": ORDER_VERSION, "epoch": 2, "position": 10, "seed": 1, "shuffle": True,
           "buffer_size": 10, "chunk_size": 1, "total_samples": 30, "skipped": 0}
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


def test_state_records_the_order_version_and_old_states_are_version_1():
    assert LoaderState.from_dict(_state()).order_version == ORDER_VERSION
    assert LoaderState.from_dict(_state()).to_dict() == _state()
    assert LoaderState.from_dict(_state(order_version=None)).order_version == 1  # saved before it was recorded
    for bad in (0, -1, "2", 2.0, True):
        with pytest.raises(ValueError, match="order_version"):
            LoaderState.from_dict(_state(order_version=bad))


def test_a_state_of_another_order_version_is_refused_with_what_to_do(tmp_path):
    loader = WebDatasetLoader(DatasetCache(tmp_path).get(30, 6), seed=1, buffer_size=10)
    state = {**loader.get_state(), "position": 12}
    assert state["order_version"] == ORDER_VERSION
    old = {k: v for k, v in state.items() if k != "order_version"}  # saved before the version was recorded
    for other in (old, {**state, "order_version": 1}, {**state, "order_version": ORDER_VERSION + 1}):
        with pytest.raises(ValueError, match=r"order version (1|3) and this loader computes version 2 .* "
                                             r"loader\.set_epoch\(1\)"):
            loader.set_state(other)
    loader.set_state(state)  # its own version resumes
    assert loader.get_state()["position"] == 12
