"""Every code block of README.md runs as written.

Each block is taken from the README itself (never a copy), with only its placeholders filled:
arrays (`counts`, `xy`, `data`), a `model` and `num_epochs`, NWB files under the names the block
uses, an S3 bucket and an AWS profile `lab` on a loopback moto server, and `/scratch/nc` turned
into a temporary directory. `RUNNERS` says which test runs which block, and
`test_every_readme_block_has_a_runner` fails for a block no test runs.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch

import nwbfiles
from storage_servers import moto_server
from test_nwb_fields import tracking_session
from neurocodec import Dataset

ROOT = Path(__file__).resolve().parents[1]
V1 = ROOT / "tests" / "data" / "format-v1"

# A text only one block holds -> the test (file::function) that runs that block.
RUNNERS = {
    "pip install torch==": "test_readme_blocks.py::test_the_get_started_block_is_what_ci_runs",
    "neurocodec plugins": "test_readme_blocks.py::test_the_command_line_block_runs_as_written",
    "--format nwb --shard-size 1000": "test_readme_blocks.py::test_the_nwb_command_runs_as_written",
    'WebDatasetWriter("./shards2"': "test_readme_blocks.py::test_the_writing_and_training_blocks_run_as_written",
    "loader.load_state_dict(": "test_readme_blocks.py::test_the_writing_and_training_blocks_run_as_written",
    "data1.nwb": "test_nwb_main_guard.py::test_the_readme_nwb_block_runs_as_a_script",
    "fields={": "test_readme_blocks.py::test_the_fields_block_runs_as_written",
    '"lfp": {"raw": True}': "test_readme_blocks.py::test_the_codecs_and_tokens_blocks_run_as_written",
    "SpikeTokens(": "test_readme_blocks.py::test_the_codecs_and_tokens_blocks_run_as_written",
    "chunk_seconds=1.0": "test_readme_blocks.py::test_the_windows_splits_and_stats_blocks_run_as_written",
    "make_split(": "test_readme_blocks.py::test_the_windows_splits_and_stats_blocks_run_as_written",
    "compute_stats(": "test_readme_blocks.py::test_the_windows_splits_and_stats_blocks_run_as_written",
    "neurocodec_register_modalities": "test_readme_blocks.py::test_the_plugin_block_registers_its_modality",
    'ShardCache("/scratch/nc"': "test_readme_blocks.py::test_the_object_storage_blocks_run_as_written",
    "neurocodec verify s3://": "test_readme_blocks.py::test_the_object_storage_blocks_run_as_written",
}


@attrs.frozen
class Block:
    """One fenced code block of the README: its language, its text and the line it starts on."""

    lang: str
    code: str
    line: int


def readme_blocks() -> list[Block]:
    """Every fenced block of README.md, in order."""
    text = (ROOT / "README.md").read_text()
    return [Block(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1)
            for m in re.finditer(r"^```(\w*)\n(.*?)\n```$", text, flags=re.S | re.M)]


def block(marker: str) -> str:
    """The one README block holding `marker`."""
    found = [b.code for b in readme_blocks() if marker in b.code]
    assert len(found) == 1, f"{len(found)} README blocks hold {marker!r}"
    return found[0]


def run_python(code: str, scope: dict) -> dict:
    """Execute a README block in `scope` (the placeholders already there), as README.md."""
    exec(compile(code, "README.md", "exec"), scope)
    return scope


def shell_env(**extra: str) -> dict:
    """The environment a README shell block runs in: this interpreter's bin first (its `pip`,
    `python` and `neurocodec` script), plus `extra`."""
    env = dict(os.environ, **extra)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def run_shell(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """Run a README shell block with bash -e in `cwd`; fails the test, showing its output, on error."""
    done = subprocess.run(["bash", "-e", "-c", code], cwd=cwd, env=shell_env(**env), capture_output=True,
                          text=True, timeout=240, check=False)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_every_readme_block_has_a_runner():
    blocks = readme_blocks()
    assert len(blocks) >= 15
    for found in blocks:
        owners = [marker for marker in RUNNERS if marker in found.code]
        assert len(owners) == 1, f"README.md line {found.line}: runners {owners} (add one to RUNNERS)"
    for runner in set(RUNNERS.values()):
        file, name = runner.split("::")
        source = (ROOT / "tests" / file).read_text()
        assert f"def {name}(" in source and "README" in source, runner


def commands(code: str) -> list[str]:
    """The commands of a shell block: comments dropped, `a && b` split, `python -m pip` as `pip`,
    pip's `-q` dropped."""
    found = []
    for line in code.splitlines():
        for command in line.split("#")[0].split("&&"):
            words = [w for w in command.split() if w != "-q"]
            if words[:3] == ["python", "-m", "pip"]:
                words = ["pip", *words[3:]]
            if words:
                found.append(" ".join(words))
    return found


def test_the_get_started_block_is_what_ci_runs():
    """CI installs with exactly the README's set-up lines and runs its test command; the example
    line runs in tests/test_examples.py, as written."""
    readme = commands(block("pip install torch=="))
    ci = commands((ROOT / ".ci" / "run").read_text())
    installs = [c for c in readme if c.startswith("pip ")]
    assert len(installs) == 3 and installs == [c for c in ci if c.startswith("pip ")]
    assert readme[-1] == "python -m pytest -n 2" == ci[-1]
    assert "python examples/webdataset_example.py" in readme
    assert 'str(EXAMPLES / "webdataset_example.py")], cwd=' in (ROOT / "tests" / "test_examples.py").read_text()


@pytest.fixture
def nwb_inputs(tmp_path) -> Path:
    """data/*.nwb as the command-line blocks name them: two sessions with spikes, LFP, behavior."""
    (tmp_path / "data").mkdir()
    for seed in (1, 2):
        nwbfiles.multirate_session(tmp_path / "data" / f"s{seed}.nwb", seed=seed, seconds=6.0)
    return tmp_path


@pytest.mark.multiprocess
def test_the_command_line_block_runs_as_written(nwb_inputs):
    done = run_shell(block("neurocodec plugins"), nwb_inputs)
    assert "spikes" in done.stdout  # info and plugins list the modality
    assert (nwb_inputs / "sample.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Dataset(nwb_inputs / "shards") as ds:
        assert len(ds) > 0 and ds.verify_all() == len(ds)


@pytest.mark.multiprocess
def test_the_nwb_command_runs_as_written(nwb_inputs):
    run_shell(block("--format nwb --shard-size 1000"), nwb_inputs)
    with Dataset(nwb_inputs / "shards") as ds:
        assert {f.name for f in ds.manifest.modalities} == {"spikes", "spikes_observed", "lfp", "behavior"}
        first = ds[0]
        assert first["spikes"].shape == (100, 4) and first["lfp"].shape == (1000, 2)  # 1 s of 10 ms bins, 1 kHz


@pytest.mark.multiprocess
def test_the_writing_and_training_blocks_run_as_written(tmp_path, monkeypatch, rng):
    counts = rng.poisson(0.3, (64, 100, 96)).astype(np.int64)
    xy = rng.standard_normal((64, 100, 2)).astype(np.float32)
    monkeypatch.chdir(tmp_path)
    run_python(block('WebDatasetWriter("./shards2"'), {"__name__": "readme", "counts": counts, "xy": xy})
    with Dataset("./shards") as ds:
        assert len(ds) == 64
        assert np.array_equal(ds[5]["spikes"], counts[5]) and np.array_equal(ds[5]["behavior"], xy[5])
    with Dataset("./shards2") as ds:
        assert len(ds) == 1 and ds[0]["metadata"]["trial_id"] == 0 and ds.manifest.compression == "zstd"

    model = torch.nn.Linear(2, 2)
    scope = run_python(block("loader.load_state_dict("), {"__name__": "readme", "num_epochs": 2, "model": model})
    saved = torch.load("ckpt.pt")
    assert set(saved) == {"model", "loader"}
    loader = scope["loader"]
    # saved after the last batch of epoch 1 (0-based): restored, the loader reads epoch 2 whole
    assert (saved["loader"]["epoch"], saved["loader"]["position"]) == (1, 64)
    assert (loader.state_dict()["epoch"], loader.state_dict()["position"]) == (2, 0)
    with Dataset("./shards") as ds:
        keys = sorted(ds[i]["__key__"] for i in range(len(ds)))
    seen = [key for batch in loader for key in batch["__key__"]]
    assert sorted(seen) == keys and len(set(keys)) == 64


def test_the_fields_block_runs_as_written(tmp_path, monkeypatch):
    tracking_session(tmp_path / "session.nwb")
    monkeypatch.chdir(tmp_path)
    run_python(block("fields={"), {"__name__": "readme"})
    with Dataset(tmp_path / "tracking") as ds:
        assert {f.name for f in ds.manifest.modalities} == {"position", "running"}
        tags = [[row["tags"] for row in ds[i]["metadata"]["intervals"]["epochs"]] for i in range(len(ds))]
    assert tags[0] == [["wake"]] and tags[-1] == [["sleep"]]


def test_the_codecs_and_tokens_blocks_run_as_written(tmp_path, monkeypatch):
    shutil.copyfile(V1 / "session.nwb", tmp_path / "recording.nwb")
    monkeypatch.chdir(tmp_path)
    scope = run_python(block('"lfp": {"raw": True}'), {"__name__": "readme"})
    batch = next(iter(scope["loader"]))
    assert tuple(batch["spikes"].data.shape) == (4, 100, 3)
    assert tuple(batch["spikes_observed"].data.shape) == (4, 100, 3)
    spikes, lfp = scope["spikes"], scope["lfp"]
    assert lfp.dtype == np.int16 and lfp.shape == (125, 4)
    with Dataset(tmp_path / "neural") as ds:
        counts = ds[0]["spikes"]
    # the events are the counts' spikes: binned at 20 ms they give the stored window
    bins = np.floor(spikes.times / 0.02 + 1e-9).astype(int)
    again = np.zeros_like(counts)
    np.add.at(again, (bins, spikes.units), 1)
    assert np.array_equal(again, counts) and counts.sum() > 0

    run_python(block("SpikeTokens("), scope)
    batch, vocabulary = scope["batch"], scope["vocabulary"]
    assert batch["spikes_unit_index"].shape == batch["spikes_mask"].shape and batch["spikes_mask"].shape[1] % 8 == 0
    assert len(vocabulary) == 3 and vocabulary.ids[0] == "v1ref/units/0"
    assert tuple(batch["lfp"].data.shape) == (4, 125, 4)


def test_the_windows_splits_and_stats_blocks_run_as_written(tmp_path, monkeypatch):
    shutil.copyfile(V1 / "session.nwb", tmp_path / "recording.nwb")
    monkeypatch.chdir(tmp_path)
    scope = run_python(block("chunk_seconds=1.0"), {"__name__": "readme"})
    starts = scope["starts"]
    assert starts == sorted(starts) and np.allclose(np.diff(starts), 0.25)  # the grid: 4 s in 0.25 s windows
    assert len(starts) == 16 and starts[0] == pytest.approx(1.2345)
    batch = next(iter(scope["train"]))
    assert tuple(batch["spikes"].data.shape) == (4, 25, 3) and tuple(batch["lfp"].data.shape) == (4, 63, 4)  # 62.5 rows, halves up

    run_python(block("make_split("), scope)
    train = [m for batch in scope["train"] for m in batch["metadata"]]
    test = [m for batch in scope["test"] for m in batch["metadata"]]
    # 4 s: train up to 2.5 s, a 1 s guard, test from 3.5 s; jittered: one window fewer unless the phase is 0
    assert len(train) in (9, 10) and len(test) in (1, 2)
    assert max(m["stop_time"] for m in train) + 1.0 <= min(m["start_time"] for m in test) + 1e-9

    run_python(block("compute_stats("), scope)
    stats, lfp = scope["train"].stats, scope["lfp"]
    assert stats.part == "train" and lfp.channels == 4 and np.all(lfp.std > 0)
    batch = next(iter(scope["test"]))
    assert batch["lfp"].dtype == torch.float32 and batch["spikes"].dtype == torch.float32


def test_the_plugin_block_registers_its_modality():
    from neurocodec.plugin.manager import load_registry

    module = types.ModuleType("my_plugin")
    run_python(block("neurocodec_register_modalities"), module.__dict__)
    registry = load_registry(plugins=[("photometry", module)])
    spec = registry.modality("photometry")
    assert spec.codec == {"id": "npy"} and registry.modality_plugin("photometry").name == "photometry"
    assert "spikes" in registry.modality_names()  # beside the installed plugins


def make_bucket(endpoint: str, name: str) -> None:
    """Create bucket `name` on the moto server at `endpoint` (moto takes unsigned requests)."""
    host, port = endpoint.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("PUT", f"/{name}")
    assert conn.getresponse().status == 200
    conn.close()


AWS_CONFIG = """[profile lab]
aws_access_key_id = testing
aws_secret_access_key = testing
region = us-east-1
endpoint_url = {endpoint}
"""


@pytest.mark.multiprocess
def test_the_object_storage_blocks_run_as_written(tmp_path, monkeypatch, rng):
    data = {"spikes": rng.poisson(0.3, (40, 20, 8)).astype(np.int64),
            "behavior": rng.standard_normal((40, 20, 2)).astype(np.float32)}
    cache = tmp_path / "cache"
    with moto_server() as endpoint:
        (tmp_path / "aws").write_text(AWS_CONFIG.format(endpoint=endpoint))
        aws = {"AWS_CONFIG_FILE": str(tmp_path / "aws"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
        for name, value in aws.items():
            monkeypatch.setenv(name, value)
        make_bucket(endpoint, "bucket")
        code = block('ShardCache("/scratch/nc"').replace("/scratch/nc", str(cache))
        scope = run_python(code, {"__name__": "readme", "data": data})
        keys = [key for batch in scope["loader"] for key in batch["__key__"]]
        assert sorted(keys) == [f"sample_{i:09d}" for i in range(1, 41)]
        assert any(cache.rglob("*.tar"))  # read through the cache
        done = run_shell(block("neurocodec verify s3://").replace("/scratch/nc", str(cache)), tmp_path, **aws)
        assert "40" in done.stdout
