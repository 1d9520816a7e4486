"""Hostile shards, the whole corpus: every case of tests/test_hostile_{tar,index,payloads,manifest}.py
read in one child process whose address space is capped, and the base dataset they all start from.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import test_hostile_index
import test_hostile_manifest
import test_hostile_payloads
import test_hostile_tar
from hostile_corpus import SAMPLES, build_case, make_samples
from neurocodec import Dataset

pytestmark = pytest.mark.timeout(120)

CASES = test_hostile_tar.CASES + test_hostile_index.CASES + test_hostile_payloads.CASES + test_hostile_manifest.CASES


def test_corpus_is_large_and_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) > 250


def test_base_dataset_is_valid(base):
    """The corpus starts from datasets that read back exactly (so every failure is the damage's)."""
    want = make_samples()
    for compression, root in base.items():
        with Dataset(root) as ds:
            assert ds.verify_all() == SAMPLES and len(ds.shards) == 3
            for (fields, metadata), got in zip(want, ds):
                assert got["metadata"] == metadata
                for name, value in fields.items():
                    assert got[name].dtype == value.dtype
                    np.testing.assert_array_equal(got[name], value)


CHILD = textwrap.dedent(r"""
    import json, resource, sys
    from neurocodec.dataset.reader import Dataset
    from neurocodec.plugin.manager import default_registry

    default_registry()  # load plugins before the cap: only reading is measured
    vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize:")).split()[1]) * 1024
    limit = vm + (512 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        bytearray(1 << 30)
        cap = "ineffective"
    except MemoryError:
        cap = "effective"
    results = []
    for job in json.load(open(sys.argv[1])):
        try:
            with Dataset(job["path"]) as ds:
                if job["full"]:
                    ds.verify_all()
                else:
                    ds[job["sample"]]
            results.append({"error": None})
        except BaseException as exc:  # MemoryError included: recorded, not fatal
            results.append({"error": type(exc).__name__, "message": str(exc)[:400]})
    print(json.dumps({"cap": cap, "results": results}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_whole_corpus_under_address_space_limit(base, tmp_path):
    """Every case, read in one process whose address space is capped at +512 MiB, fails with the
    expected typed error: no case (4 GiB bombs included) needs memory beyond the cap."""
    jobs, expects = [], []
    for n, c in enumerate(CASES):
        root, expect = build_case(c, base, tmp_path / f"case{n}")
        jobs.append({"path": str(root), "sample": expect.sample, "full": expect.full})
        expects.append(expect)
    jobs.append({"path": str(base["xz"]), "sample": 4, "full": True})  # control: valid data reads
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "jobs.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["cap"] == "effective"
    *results, control = report["results"]
    assert control == {"error": None}
    for c, expect, got in zip(CASES, expects, results):
        assert got["error"] == expect.error.__name__, (c.id, got)
        assert re.search(expect.match, got["message"]), (c.id, got)
