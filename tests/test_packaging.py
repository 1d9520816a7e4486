"""The packaging metadata lists every package of the tree (a missing one breaks installed wheels)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "neurocodec").rglob("__init__.py")}
    found.add("neurocodec_plugins")
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"
    assert config["package-dir"]["neurocodec_plugins"] == "plugins"


def test_dependencies_admit_the_cpu_torch_and_never_pull_a_bare_torch():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = [d for d in deps if d.startswith("torch")]
    assert torch and "<" in torch[0] and ">=" in torch[0], torch


def test_every_install_hint_names_a_declared_extra():
    """A hint like `pip install 'neurocodec[nifti]'` in the code must name an extra that exists."""
    import re

    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    hinted = {m for path in [*(ROOT / "neurocodec").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]
              for m in re.findall(r"neurocodec\[([a-z0-9_-]+)\]", path.read_text())}
    assert hinted and hinted <= extras, f"hints name undeclared extras: {sorted(hinted - extras)}"
