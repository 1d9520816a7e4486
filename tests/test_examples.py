"""examples/webdataset_example.py (the guide's eight examples, as the README runs it) and quickstart.py run; the
example plugin examples/neurocodec-photometry installs from its wheel and works."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.multiprocess
def test_webdataset_example_runs_all_eight(tmp_path):
    """As the README's get-started block runs it: no arguments (1,000 samples, a temporary directory)."""
    result = subprocess.run([sys.executable, str(EXAMPLES / "webdataset_example.py")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    for n in range(1, 9):
        assert f"[{n}]" in result.stdout, result.stdout
    assert "stream identical" in result.stdout and "identical streams of 1000 unique samples" in result.stdout
    assert list(tmp_path.iterdir()) == []  # everything it wrote was in its own temporary directory


def test_quickstart_writes_a_dataset(tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLES / "quickstart.py"), str(tmp_path / "qs")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "wrote 2000 samples in 4 shards" in result.stdout


PHOTOMETRY = EXAMPLES / "neurocodec-photometry"
PHOTOMETRY_SCRIPT = """
import json, sys
import importlib.metadata as md
import numpy as np
import neurocodec_photometry
from neurocodec import Dataset, WebDatasetWriter

out = sys.argv[1]
rng = np.random.default_rng(5)
samples = []
for t in (300, 250, 300):
    traces = np.cumsum(rng.standard_normal((t, 4)), axis=0).astype(np.float32)
    traces[0, :3] = [np.nan, -0.0, np.inf]
    samples.append({"photometry": traces, "calcium": rng.standard_normal((t // 10, 6)).astype(np.float32)})
with WebDatasetWriter(out, shard_size=2) as writer:
    for sample in samples:
        writer.write_sample(sample)
with Dataset(out) as ds:
    assert ds.verify_all() == 3
    for want, got in zip(samples, ds):
        for name in want:
            assert got[name].dtype == want[name].dtype and got[name].tobytes() == want[name].tobytes(), name
    fields = {f.name: [f.plugin, f.distribution, f.codec_id] for f in ds.fields if f.name != "metadata"}
eps = {ep.name: ep.value for ep in md.entry_points(group="neurocodec.plugins")}
print(json.dumps({"module": neurocodec_photometry.__file__, "fields": fields, "entry_points": eps}))
"""


def _plain_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEUROCODEC_") and k != "PYTHONPATH"}
    return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_ROOT_USER_ACTION": "ignore", **extra}


def _pip(cwd: Path, *args: str | Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *map(str, args), "-q"], cwd=cwd, env=_plain_env(),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def photometry_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin built into a wheel from a clean copy and installed with pip into a
    directory of its own (outside the repo), where its entry point is found on PYTHONPATH."""
    base = tmp_path_factory.mktemp("photometry")
    source = base / "neurocodec-photometry"
    shutil.copytree(PHOTOMETRY, source, ignore=shutil.ignore_patterns(
        "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    wheels, site = base / "wheels", base / "site"
    _pip(base, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, source)
    _pip(base, "install", "--no-deps", "--target", site, *wheels.glob("*.whl"))
    return site


@pytest.mark.slow
def test_photometry_example_plugin_installs_and_round_trips(photometry_site: Path, tmp_path: Path) -> None:
    env = _plain_env(PYTHONPATH=str(photometry_site))
    run = functools.partial(subprocess.run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    script = tmp_path / "photometry_script.py"
    script.write_text(PHOTOMETRY_SCRIPT)
    done = run([sys.executable, str(script), str(tmp_path / "ds")])
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert Path(report["module"]).resolve().is_relative_to(photometry_site.resolve())
    assert report["entry_points"]["photometry"] == "neurocodec_photometry.plugin"
    assert report["entry_points"]["calcium"] == "neurocodec_plugins.calcium"  # built in: no clash
    assert report["fields"]["photometry"] == ["photometry", "neurocodec-photometry", "photometry-delta"]
    assert report["fields"]["calcium"] == ["calcium", "neurocodec", "npy"]
    tar = (tmp_path / "ds" / "shard_000000.tar").read_bytes()
    assert b"sample_000000001.photometry.phdz\0" in tar
    listing = run([sys.executable, "-m", "neurocodec", "plugins"]).stdout
    assert f"{'photometry':<12} neurocodec-photometry 0.1.0  (neurocodec_photometry.plugin)" in listing
    # The example's own test suite, against the installed plugin.
    tests = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PHOTOMETRY / "tests")])
    assert tests.returncode == 0 and " passed" in tests.stdout, tests.stdout[-3000:]
    # Without it, the dataset says what to install.
    verify = run([sys.executable, "-m", "neurocodec", "verify", str(tmp_path / "ds")],
                 env={**env, "NEUROCODEC_DISABLE_PLUGINS": "photometry"})
    assert verify.returncode == 1 and "pip install neurocodec-photometry==0.1.0" in verify.stderr
