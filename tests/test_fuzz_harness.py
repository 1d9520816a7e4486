"""The atheris harness in fuzz/ cannot rot: its target functions run here over the seed corpus,
without atheris. Valid seeds (cut from a written dataset) must be accepted by their parser,
hostile seeds (issue 11's forgeries) refused with the parser's documented error, odd seeds either,
and no seed may raise anything else or break an invariant (see fuzz/README.md)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"


def load(name: str):
    """Import a module of fuzz/ by path (fuzz/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"fuzz_{name}", FUZZ / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


harness = load("fuzz_parsers")
SEEDS = sorted((target, path) for target in harness.TARGETS for path in (FUZZ / "corpus" / target).iterdir())


def test_every_target_has_valid_and_hostile_seeds():
    for target in harness.TARGETS:
        names = [p.name for t, p in SEEDS if t == target]
        assert any(n.startswith("valid") for n in names) and any(n.startswith("hostile") for n in names), target


@pytest.mark.parametrize("target,path", SEEDS, ids=[f"{t}/{p.name}" for t, p in SEEDS])
def test_seed(target, path):
    accepted = harness.TARGETS[target](path.read_bytes())
    kind = path.name.split("-")[0]
    assert kind in ("valid", "hostile", "odd"), path.name
    if kind != "odd":
        assert accepted is (kind == "valid"), f"{target} {'refused' if kind == 'valid' else 'accepted'} {path.name}"


def test_replay_command_reports_no_findings():
    """The documented command, as a user runs it (no atheris needed)."""
    proc = subprocess.run([sys.executable, str(FUZZ / "fuzz_parsers.py"), "all", "--replay"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for target in harness.TARGETS:
        assert any(line.startswith(f"{target}: ") and line.endswith(" 0 findings")
                   for line in proc.stdout.splitlines()), proc.stdout


def test_replay_reports_a_finding(tmp_path):
    """A target that raises something undocumented is reported, with a non-zero exit."""
    bad = tmp_path / "not-an-index"
    bad.write_bytes(harness.INDEX_PREFIX.pack(1, 1, 0, 0, 0) + b"\x93NUMPY\x01\x00")
    assert harness.replay("index", [bad]) == 0  # a malformed index is the documented ValueError
    harness.TARGETS["broken"] = lambda data: int("not a number")
    try:
        assert harness.replay("broken", [bad]) == 1
    finally:
        del harness.TARGETS["broken"]

