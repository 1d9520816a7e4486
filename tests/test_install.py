"""Installation for real: wheels built from the repo, installed into a fresh virtual environment.

One fully fresh venv (no system site-packages) is shared by the module: `torch==2.13.0` (the
local CPU wheel) plus the neurocodec wheel and its dependencies, resolved by pip as a user's
install would be. Everything then runs in subprocesses of that venv, from a directory outside
the repo, so the editable install of the repo cannot leak in (the tests check `__file__` and the
distributions' locations to prove it). The photometry example plugin and a deliberately broken
plugin are then installed into the same venv as real wheels with real entry points.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import attrs
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "neurocodec-photometry"
BUILT_INS = ("behavior", "calcium", "eeg", "fmri", "generic", "lfp", "spikes", "video")
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis",
    ".benchmarks", ".venv", ".ci-shards", "shards",
)


def _env(**extra: str) -> dict[str, str]:
    """The current environment without anything that would put the repo or switches in play."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
           and not k.startswith("NEUROCODEC_")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_ROOT_USER_ACTION="ignore",
               PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def _run(cmd: list[str | Path], cwd: Path, *, check: bool = True, timeout: float = 240,
         **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(**env), capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
                    f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc


def _build_wheel(source: Path, work: Path, out: Path) -> Path:
    """Build a wheel from a clean copy of `source` (the build never writes into the repo)."""
    copy = work / f"src-{source.name}"
    shutil.copytree(source, copy, ignore=_NOT_SOURCE)
    out.mkdir(exist_ok=True)
    before = set(out.glob("*.whl"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", out, copy], cwd=work)
    (wheel,) = set(out.glob("*.whl")) - before
    return wheel


@attrs.frozen
class Venv:
    """A virtual environment and a scratch directory outside the repo to run things from."""

    root: Path
    site: Path
    work: Path
    wheels: Path

    @property
    def python(self) -> Path:
        """The venv's interpreter."""
        return self.root / "bin" / "python"

    def run(self, *args: str | Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        """Run `python *args` in the venv."""
        return _run([self.python, *args], self.work, check=check, **env)

    def cli(self, *args: str | Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        """Run the venv's `neurocodec` console script."""
        return _run([self.root / "bin" / "neurocodec", *args], self.work, check=check, **env)

    def script(self, source: str, *args: str | Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        """Write `source` to a file in the work directory and run it in the venv."""
        path = self.work / f"script_{abs(hash(source))}.py"
        path.write_text(textwrap.dedent(source))
        return self.run(path, *args, check=check, **env)

    def pip(self, *args: str | Path) -> None:
        """Run pip on the venv: this interpreter's pip with `--python`, which runs it under the
        venv's interpreter (the venv has no pip of its own; see `venv`)."""
        _run([sys.executable, "-m", "pip", "--python", self.python, *args, "-q"], self.work)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Venv]:
    """A fresh venv holding the neurocodec wheel built from this repo, with its dependencies."""
    base = tmp_path_factory.mktemp("install")
    work, wheels = base / "work", base / "wheels"
    work.mkdir()
    wheel = _build_wheel(REPO, base, wheels)
    root = base / "venv"
    # Without pip: ensurepip's unpacking and byte-compiling of pip took longer than the venv
    # itself; pip is run on the venv from outside (`Venv.pip`).
    _run([sys.executable, "-m", "venv", "--without-pip", root], cwd=base)
    env = Venv(root=root, site=Path(), work=work, wheels=wheels)
    # torch first from the local CPU wheel (a bare `torch` would pull CUDA), then the wheel with
    # its dependencies; pytest only to run the example plugin's own tests later. --no-compile:
    # byte-compiling every installed module (torch, sympy, pandas: thousands that no test here
    # imports) was two thirds of the install; the few modules the tests import are compiled as
    # they are imported.
    env.pip("install", "--no-compile", "torch==2.13.0", wheel, "pytest")
    site = env.run("-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip()
    yield attrs.evolve(env, site=Path(site).resolve())
    shutil.rmtree(base, ignore_errors=True)  # about 1 GiB; do not leave it to pytest's rotation


def _under(path: str, root: Path) -> bool:
    return Path(path).resolve().is_relative_to(root)


BUILTIN_SCRIPT = """
    import importlib.metadata as md, json, sys
    import numpy as np
    import neurocodec, neurocodec_plugins
    from neurocodec import Dataset, WebDatasetWriter

    out = sys.argv[1]
    rng = np.random.default_rng(0)
    samples = [{
        "spikes": rng.poisson(1.0, (20, 8)).astype(np.int64),
        "lfp": rng.standard_normal((4, 50)).astype(np.float32),
        "eeg": rng.standard_normal((50, 3)),
        "fmri": rng.integers(-1000, 1000, (2, 4, 4, 3), dtype=np.int16),
        "video": rng.integers(0, 256, (2, 6, 5), dtype=np.uint8),
        "behavior": rng.standard_normal((20, 2)).astype(np.float32),
        "calcium": rng.standard_normal((30, 7)).astype(np.float32),
    } for _ in range(5)]
    with WebDatasetWriter(out, shard_size=2, compression="zstd") as writer:
        for i, sample in enumerate(samples):
            writer.write_sample(sample, metadata={"trial": i})
    with Dataset(out) as ds:
        assert len(ds) == 5 and len(ds.shards) == 3 and ds.verify_all() == 5
        for i, (want, got) in enumerate(zip(samples, ds)):
            assert got["metadata"] == {"trial": i}
            for name, value in want.items():
                assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
                assert got[name].tobytes() == value.tobytes(), name
        fields = {f.name: [f.modality, f.plugin, f.distribution, f.codec] for f in ds.fields}
    eps = md.entry_points(group="neurocodec.plugins")
    print(json.dumps({
        "neurocodec": neurocodec.__file__, "neurocodec_plugins": neurocodec_plugins.__file__,
        "distribution": str(md.distribution("neurocodec").locate_file("")),
        "version": md.version("neurocodec"), "fields": fields,
        "entry_points": {ep.name: str(ep.dist.locate_file("")) for ep in eps},
    }))
"""


def test_wheel_works_in_a_fresh_venv(venv: Venv) -> None:
    data = venv.work / "builtin"
    report = json.loads(venv.script(BUILTIN_SCRIPT, data).stdout)
    # The venv's copy, not the repo's editable install.
    for key in ("neurocodec", "neurocodec_plugins", "distribution"):
        assert _under(report[key], venv.site), (key, report[key])
        assert not _under(report[key], REPO), (key, report[key])
    assert report["version"] == "0.1.0"
    assert set(BUILT_INS) <= set(report["entry_points"])
    for name in BUILT_INS:
        assert _under(report["entry_points"][name], venv.site), name
    for name in ("spikes", "lfp", "eeg", "fmri", "video", "behavior", "calcium"):
        modality, plugin, dist, codec = report["fields"][name]
        assert (modality, plugin, dist, codec["id"]) == (name, name, "neurocodec", "npy")
    assert report["fields"]["spikes"][3]["pack_integers"] is True

    listing = venv.cli("plugins").stdout
    for name in BUILT_INS:
        assert f"{name:<12} neurocodec 0.1.0  (neurocodec_plugins.{name})" in listing
    assert "codecs:     bytes, json, ndarray, npy, scaled-int, text" in listing
    info = venv.run("-m", "neurocodec", "info", data).stdout
    assert "samples: 5  shards: 3" in info and "compression: zstd" in info
    for name in ("spikes", "lfp", "eeg", "fmri", "video", "behavior", "calcium"):
        assert f"codec npy ({name} 0.1.0)" in info
    assert "ok: 5 samples in 3 shards" in venv.cli("verify", data).stdout


@pytest.fixture(scope="module")
def photometry(venv: Venv) -> Venv:
    """The venv with the example plugin installed from its wheel (dependencies checked by pip)."""
    venv.pip("install", _build_wheel(EXAMPLE, venv.work, venv.wheels))
    return venv


PHOTOMETRY_SCRIPT = """
    import json, sys
    import numpy as np
    import neurocodec_photometry
    from neurocodec import Dataset, WebDatasetWriter

    out = sys.argv[1]
    rng = np.random.default_rng(1)
    samples = []
    for t in (300, 250, 300, 280):
        traces = np.cumsum(rng.standard_normal((t, 12)), axis=0).astype(np.float32)
        traces[0, :3] = [np.nan, -0.0, np.inf]
        samples.append({"photometry": traces, "spikes": rng.poisson(0.5, (t // 10, 12))})
    with WebDatasetWriter(out, shard_size=3) as writer:
        for sample in samples:
            writer.write_sample(sample)
    with Dataset(out) as ds:
        assert ds.verify_all() == 4
        for want, got in zip(samples, ds):
            for name in want:
                assert got[name].dtype == want[name].dtype and got[name].tobytes() == want[name].tobytes()
    print(json.dumps({"module": neurocodec_photometry.__file__}))
"""


@pytest.fixture(scope="module")
def photometry_dataset(photometry: Venv) -> Path:
    """A dataset with a photometry field, written and read back bit-exactly in the venv."""
    out = photometry.work / "photometry"
    report = json.loads(photometry.script(PHOTOMETRY_SCRIPT, out).stdout)
    assert _under(report["module"], photometry.site)
    return out


def test_photometry_plugin_installs_and_round_trips(photometry: Venv, photometry_dataset: Path) -> None:
    manifest = json.loads((photometry_dataset / ".neurocodec" / "dataset_metadata.json").read_text())
    field = next(f for f in manifest["fields"] if f["name"] == "photometry")
    assert field["codec"] == {"id": "photometry-delta", "level": 6}
    assert (field["plugin"], field["distribution"], field["plugin_version"]) == ("photometry", "neurocodec-photometry", "0.1.0")
    assert (field["dtype"], field["shape"], field["extension"]) == ("<f4", [None, 12], "phdz")
    tar = (photometry_dataset / "shard_000000.tar").read_bytes()
    assert b"sample_000000001.photometry.phdz\0" in tar and b"sample_000000003.photometry.phdz\0" in tar

    listing = photometry.cli("plugins").stdout
    assert f"{'photometry':<12} neurocodec-photometry 0.1.0  (neurocodec_photometry.plugin)" in listing
    block = listing[listing.index(f"{'photometry':<12} neurocodec-photometry"):].splitlines()
    assert block[1].split() == ["modalities:", "photometry"] and block[3].split() == ["codecs:", "photometry-delta"]
    assert block[2].split()[0] == "photometry" and len(block[2].split()) > 1  # the modality's description
    assert "ok: 4 samples in 2 shards" in photometry.cli("verify", photometry_dataset).stdout
    # The example's own test suite, run against the installed plugin.
    tests = photometry.run("-m", "pytest", "-q", "-p", "no:cacheprovider", EXAMPLE / "tests").stdout
    assert " passed" in tests and "failed" not in tests


UNKNOWN_CODEC_SCRIPT = """
    import json, sys
    from neurocodec import Dataset, UnknownCodecError
    try:
        Dataset(sys.argv[1])
    except UnknownCodecError as exc:
        print(json.dumps({"error": str(exc)}))
    else:
        sys.exit("the dataset opened without its codec")
"""


@pytest.mark.parametrize("switch", ["photometry", "neurocodec-photometry"])
def test_reading_without_the_plugin_says_what_to_install(photometry: Venv, photometry_dataset: Path,
                                                        switch: str) -> None:
    off = {"NEUROCODEC_DISABLE_PLUGINS": switch}
    error = json.loads(photometry.script(UNKNOWN_CODEC_SCRIPT, photometry_dataset, **off).stdout)["error"]
    assert "codec 'photometry-delta' (field 'photometry')" in error
    assert "pip install neurocodec-photometry==0.1.0" in error
    verify = photometry.cli("verify", photometry_dataset, check=False, **off)
    assert verify.returncode == 1 and "pip install neurocodec-photometry==0.1.0" in verify.stderr
    listing = photometry.cli("plugins", **off).stdout
    assert "neurocodec-photometry 0.1.0" not in listing and f"disabled by NEUROCODEC_DISABLE_PLUGINS: {switch}" in listing
    # The manifest alone still describes the dataset.
    assert "codec photometry-delta (photometry 0.1.0)" in photometry.cli("info", photometry_dataset, **off).stdout


BROKEN_PYPROJECT = """
    [build-system]
    requires = ["setuptools>=68"]
    build-backend = "setuptools.build_meta"

    [project]
    name = "neurocodec-broken"
    version = "0.0.1"

    [project.entry-points."neurocodec.plugins"]
    broken = "neurocodec_broken"

    [tool.setuptools]
    py-modules = ["neurocodec_broken"]
"""


@pytest.fixture
def broken(photometry: Venv) -> Iterator[Venv]:
    """The venv with a plugin distribution whose module fails to import; removed afterwards."""
    source = photometry.work / "neurocodec-broken"
    source.mkdir()
    (source / "pyproject.toml").write_text(textwrap.dedent(BROKEN_PYPROJECT))
    (source / "neurocodec_broken.py").write_text("import neurocodec_missing_dependency  # not installed\n")
    photometry.pip("install", "--no-deps", _build_wheel(source, photometry.work, photometry.wheels))
    yield photometry
    photometry.pip("uninstall", "-y", "neurocodec-broken")


LOAD_SCRIPT = """
    import json, sys
    import neurocodec
    assert not any(m.startswith(("neurocodec_broken", "neurocodec_plugins", "neurocodec_photometry"))
                   for m in sys.modules), "import neurocodec loaded a plugin"
    from neurocodec import PluginLoadError
    from neurocodec.plugin.manager import load_registry
    try:
        load_registry()
    except PluginLoadError as exc:
        print(json.dumps({"error": str(exc), "cause": type(exc.__cause__).__name__}))
    else:
        sys.exit("the broken plugin loaded")
"""


def test_broken_plugin_is_named_and_can_be_disabled(broken: Venv, photometry_dataset: Path) -> None:
    report = json.loads(broken.script(LOAD_SCRIPT).stdout)
    assert "plugin 'broken' from distribution neurocodec-broken 0.0.1 failed to import" in report["error"]
    assert "neurocodec_missing_dependency" in report["error"]
    assert "NEUROCODEC_DISABLE_PLUGINS=broken" in report["error"]
    assert report["cause"] == "ModuleNotFoundError"
    for command in (("plugins",), ("verify", photometry_dataset)):
        failed = broken.cli(*command, check=False)
        assert failed.returncode == 1 and "distribution neurocodec-broken 0.0.1" in failed.stderr

    for switch in ("broken", "neurocodec-broken"):
        off = {"NEUROCODEC_DISABLE_PLUGINS": switch}
        listing = broken.cli("plugins", **off).stdout
        assert "neurocodec-photometry 0.1.0" in listing and "neurocodec-broken 0.0.1" not in listing
        assert all(f"{name:<12} neurocodec 0.1.0" in listing for name in BUILT_INS)
        assert "ok: 4 samples in 2 shards" in broken.cli("verify", photometry_dataset, **off).stdout
