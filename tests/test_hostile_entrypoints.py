"""Every reader entry point against every crafted dataset of issue 11.

The datasets (tests/hostile_entrypoints.py): an object-dtype field over an `|O` payload, an
index decoded size of 2**63+5 under xz, bz2 and zstd, 999,999,999 samples claimed by one shard,
S8 / M8[ns] / >f4 fields, a 28 KB zstd member honestly declaring 900 MiB, and a shard truncated
to 0 bytes after the reader opened it. The entry points: `Dataset` by index and by iteration,
`WebDatasetLoader`, `RandomAccessWebDataset`, `create_webdataset_dataloader` with 0 and 2
workers, `ShardedDatasetInfo`, the `neurocodec.dataset.legacy` readers without `allow_pickle`, and the
`neurocodec info` / `neurocodec verify` commands as subprocesses.

Each must hand out only correct samples (bit for bit the ones written, never a damaged one) or
stop with neurocodec's own error naming the dataset, shard or member (and the field, for a
field's dtype); a reader of every sample must stop so on a dataset that cannot be read whole.
Never a signal, never a foreign exception type (MemoryError included). Each read runs in a
forked process (tests/isolated.py) whose address space is capped 256 MiB above its size once
warmed up: no case honestly declares more than a few KB per sample (the 900 MiB member is above
the default per-member ceiling, so it must be refused before it is allocated). A watchdog ends
a read still running after 20 s, and pytest-timeout bounds each test; no clock is asserted.
The commands run under RLIMIT_AS 256 MiB above the peak the same command reaches on a valid
dataset.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import hostile_entrypoints as he
from isolated import MiB, ForkServer

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess, pytest.mark.timeout(120),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork, RLIMIT_AS and /proc")]

HEADROOM = 256 * MiB
WATCHDOG = 20.0


@pytest.fixture(scope="module")
def server():
    """The fork server, with torch and the loaders imported and every entry point warmed up."""
    srv = ForkServer("numpy", "torch", "neurocodec.loader.dataloader", "neurocodec.dataset.legacy", "hostile_entrypoints",
                     warmup="hostile_entrypoints:warm")
    yield srv
    srv.close()


def run(server: ForkServer, entry: str, root: Path, case: he.Case | None = None) -> dict:
    """`read_entry` in a fresh fork under the cap; fails the test on a crash or a hang."""
    truncate = str(root / case.truncate) if case and case.truncate else None
    out = server.run("hostile_entrypoints:read_entry", headroom=HEADROOM, watchdog=WATCHDOG, entry=entry,
                     root=str(root), shuffle=case.shuffle if case else True, truncate=truncate,
                     out=str(root.parent / f"{root.name}-converted"))
    assert not out.crashed, f"{entry} crashed: {out.explain()}"
    assert out.raised is None, out.raised
    if truncate:
        assert os.path.getsize(truncate) == 0 or not out.returned["items"], "the shard was never truncated"
    return out.returned


def check_error(error: dict, case: he.Case, root: Path, entry: str) -> None:
    """A reader's error is neurocodec's own and names the dataset, shard or member (and field)."""
    where = f"{entry} on {case.name}: {error['type']}: {error['message']}\n{error.get('traceback', '')}"
    assert error["neurocodec"], f"foreign exception from {where}"
    assert any(n in error["message"] for n in (*case.names, root.name)), f"error names no dataset/shard/member: {where}"
    if case.field:
        assert case.field in error["message"], f"error does not name field {case.field!r}: {where}"


def check_samples(items: list[dict], case: he.Case, entry: str) -> None:
    """Every sample handed out is an undamaged one, bit for bit as written."""
    want = he.original_digests(case.count, case.width)
    for item in items:
        key = item["__key__"][2].strip('"')
        index = int(key.split("_")[1]) - 1
        assert index not in case.damaged, f"{entry} handed out damaged sample {key} of {case.name}: {item}"
        assert 0 <= index < len(want) and item == want[index], f"{entry} handed out a wrong {key}: {item}"


def check_legacy(items: list[dict], entry: str) -> None:
    """The legacy readers hand out arrays only of the dtypes the format stores."""
    for item in items:
        for name, digest in item.items():
            if digest[0] == "array":
                dt = np.dtype(digest[1])
                assert dt.kind in "biufc" and dt.byteorder != ">" and dt.itemsize <= 16, (entry, name, digest)


def judge(result: dict, case: he.Case, root: Path, entry: str) -> None:
    """The property, for one entry point over one crafted dataset."""
    if result["error"] is not None:
        check_error(result["error"], case, root, entry)
    if entry in he.LEGACY:
        check_legacy(result["items"], entry)
    elif entry not in he.MANIFEST_ONLY:
        check_samples(result["items"], case, entry)
        if case.must_fail:
            assert result["error"] is not None, f"{entry} read all of {case.name} without an error"


@pytest.mark.parametrize("entry", he.ENTRIES)
@pytest.mark.parametrize("name", list(he.CASES))
def test_entry_point_on_crafted_dataset(server, tmp_path, name, entry):
    case = he.CASES[name]
    root = he.build_case(case, tmp_path / f"case-{name.replace('[', '').replace(']', '')}")
    judge(run(server, entry, root, case), case, root, entry)


@pytest.mark.parametrize("entry", he.ENTRIES)
@pytest.mark.parametrize("compression,shard_size,count,width", [("none", 2, 3, 8), ("zstd", 2, 3, 8), ("none", 32, 40, 2048)])
def test_entry_point_on_valid_dataset_under_the_same_cap(server, tmp_path, entry, compression, shard_size, count, width):
    """Control: the cap and the harness leave an honest read whole (every sample, exact)."""
    root = he.write(tmp_path / "valid", compression, shard_size, count, width)
    result = run(server, entry, root)
    if entry == "legacy_convert" and compression != "none":
        # Legacy shards hold plain members: a compressed member's name reads as field "lfp.npy",
        # which no dataset may hold. The writer refuses it, in its own words.
        assert result["error"]["type"] == "SampleError" and "lfp.npy" in result["error"]["message"], result
        return
    assert result["error"] is None, result["error"]
    if entry not in he.MANIFEST_ONLY + he.LEGACY:
        case = he.Case("valid", lambda r: None, compression, shard_size, count, width, must_fail=False)
        check_samples(result["items"], case, entry)
        assert len(result["items"]) == count


def test_cap_is_effective(server):
    """Control: a fork that allocates more than the headroom gets MemoryError."""
    out = server.run("hostile_entrypoints:allocate", headroom=HEADROOM, watchdog=WATCHDOG, size=HEADROOM // 2)
    assert out.returned == HEADROOM // 2, out.explain()
    out = server.run("hostile_entrypoints:allocate", headroom=HEADROOM, watchdog=WATCHDOG, size=HEADROOM + 64 * MiB)
    assert out.raised and out.raised["type"] == "MemoryError", out.explain()


# -- the commands ----------------------------------------------------------------------------------

CLI = textwrap.dedent(r"""
    # python -c CLI TRUNCATE COMMAND PATH: `neurocodec COMMAND PATH` as `python -m neurocodec` runs
    # it, printing VmPeak on exit; with TRUNCATE (not "-"), that shard is truncated to 0 bytes as
    # soon as neurocodec's ShardReader for it has been constructed (opened, checked, not yet read).
    import atexit, os, runpy, sys, threading
    truncate, argv = sys.argv[1], sys.argv[2:]

    def peak():
        with open("/proc/self/status") as f:
            sys.stderr.write(next(l for l in f if l.startswith("VmPeak:")))

    atexit.register(peak)
    if truncate != "-":
        target, state = os.path.realpath(truncate), {"opened": False, "done": False}

        def hook(frame, event, arg):
            if state["done"]:
                return
            if event == "return" and frame.f_code.co_name == "__init__":
                me = frame.f_locals.get("self")
                if type(me).__name__ == "ShardReader" and os.path.realpath(str(getattr(me, "path", ""))) == target:
                    state["opened"] = True
            elif event == "call" and state["opened"]:
                os.truncate(target, 0)
                state["done"] = True

        sys.setprofile(hook)
        threading.setprofile(hook)
    sys.argv = ["neurocodec", *argv]
    runpy.run_module("neurocodec", run_name="__main__", alter_sys=True)
""")


def vm_peak(stderr: str) -> int:
    """The VmPeak line the CLI wrapper prints, in bytes."""
    return int(re.search(r"VmPeak:\s+(\d+) kB", stderr)[1]) * 1024


@pytest.fixture(scope="module")
def cli_limit(tmp_path_factory) -> dict[str, int]:
    """Per command: its peak address space on a valid dataset, plus the headroom."""
    root = he.write(tmp_path_factory.mktemp("cli-valid") / "ds", "zstd")
    limits = {}
    for command in ("info", "verify"):
        proc = subprocess.run([sys.executable, "-c", CLI, "-", command, str(root)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        limits[command] = vm_peak(proc.stderr) + HEADROOM
    return limits


def run_cli(command: str, root: Path, limit: int, truncate: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m neurocodec COMMAND ROOT` under RLIMIT_AS `limit` (through the wrapper when a
    shard is to be truncated under it)."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))

    args = ([sys.executable, "-c", CLI, str(truncate), command, str(root)] if truncate
            else [sys.executable, "-m", "neurocodec", command, str(root)])
    return subprocess.run(args, capture_output=True, text=True, timeout=60, preexec_fn=cap)


@pytest.mark.parametrize("command", ["info", "verify"])
@pytest.mark.parametrize("name", list(he.CASES))
def test_command_on_crafted_dataset(cli_limit, tmp_path, name, command):
    case = he.CASES[name]
    root = he.build_case(case, tmp_path / "ds")
    truncate = root / case.truncate if case.truncate and command == "verify" else None
    proc = run_cli(command, root, cli_limit[command], truncate)
    shown = f"neurocodec {command} on {name}: exit {proc.returncode}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-3000:]}"
    assert proc.returncode in (0, 1), shown
    assert "Traceback" not in proc.stderr, shown
    if truncate:
        assert truncate.stat().st_size == 0, "the shard was never truncated under the command"
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("VmPeak:")]
    if proc.returncode == 1:
        assert len(lines) == 1 and lines[0].startswith(f"neurocodec {command}: error: "), shown
        assert any(n in lines[0] for n in (*case.names, root.name)), shown
        assert not case.field or case.field in lines[0], shown
    else:
        assert not lines, shown
        assert command == "info" or not (case.must_fail or truncate), f"verify passed a crafted dataset: {shown}"


@pytest.mark.parametrize("command", ["info", "verify"])
def test_command_on_valid_dataset_under_the_same_cap(cli_limit, tmp_path, command):
    """Control: the commands' cap leaves an honest run whole."""
    root = he.write(tmp_path / "ds", "xz")
    proc = run_cli(command, root, cli_limit[command])
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    assert "3" in proc.stdout
