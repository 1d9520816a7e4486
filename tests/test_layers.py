"""The layer contract, as far as the tree keeps it today (issue 12): imports go one way.

Every `import` and `from ... import` in neurocodec/ is read from the source (module level,
inside functions, and under TYPE_CHECKING alike: a function-level import is still a
dependency). The leaves import no other neurocodec module but `errors`; `format/` is bytes on
disk only: it imports the leaves and itself, never plugins, the registry, codecs, storage, the
loaders, NWB or the command line; the plugin system (hook specs, plugin manager, registry,
modalities, codecs, collate rules) imports format and the leaves; `storage/` imports format and
the leaves; `dataset/` (reading, writing, merging whole datasets) imports all of those, never the
loaders, NWB conversion or the command line (see docs/architecture.md). Modules that still break the rule are listed in PENDING with
exactly what they import; the list may only shrink: a listed module that no longer needs an
entry fails the test, so the entry is removed when the module moves to its layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "neurocodec"

LEAVES = {"neurocodec.errors", "neurocodec.npy", "neurocodec.fsutil", "neurocodec.process"}
# The NWB extractor protocol (what a plugin's `neurocodec_nwb_extractor` returns, and the readers
# and window helpers it builds on) is part of the plugin API; the converter above it is not.
NWB_PROTOCOL = {"neurocodec.nwb", "neurocodec.nwb.extract", "neurocodec.nwb.series", "neurocodec.nwb.windows",
                "neurocodec.nwb.context"}
MAY_IMPORT = {
    "leaf": {"leaf"},
    "neurocodec.format": {"leaf", "neurocodec.format"},
    "nwb-protocol": {"leaf", "neurocodec.format", "nwb-protocol"},
    "neurocodec.plugin": {"leaf", "neurocodec.format", "nwb-protocol", "neurocodec.plugin"},
    "neurocodec.storage": {"leaf", "neurocodec.format", "neurocodec.storage"},
    # `neurocodec` itself: `from neurocodec import __version__` (its exports are lazy).
    "neurocodec.dataset": {"leaf", "neurocodec.format", "nwb-protocol", "neurocodec.plugin", "neurocodec.storage",
                           "neurocodec.dataset", "neurocodec"},
    # The loaders and NWB conversion sit side by side on top of dataset/: neither imports the other.
    # The loaders build one augmentation themselves: `normalize=` puts `transforms.Normalize` first.
    "neurocodec.loader": {"leaf", "neurocodec.format", "nwb-protocol", "neurocodec.plugin", "neurocodec.storage",
                          "neurocodec.dataset", "neurocodec.loader", "neurocodec", "neurocodec.transforms"},
    "neurocodec.nwb": {"leaf", "neurocodec.format", "nwb-protocol", "neurocodec.plugin", "neurocodec.storage",
                       "neurocodec.dataset", "neurocodec.nwb", "neurocodec"},
    # The built-in augmentations are written against the plugin API (SpikeEvents), as a user's own
    # `transform=` would be; the loaders only call the transform they are given (and Normalize).
    "neurocodec.transforms": {"leaf", "neurocodec.plugin"},
    # Pictures read samples as a user does (Dataset; load-time windows through the map-style loader).
    "neurocodec.viz": {"leaf", "neurocodec.format", "neurocodec.plugin", "neurocodec.dataset", "neurocodec.loader",
                       "neurocodec.viz"},
}
PENDING: dict[str, set[str]] = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """The neurocodec modules `path` imports anywhere in its source."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from neurocodec import npy` depends on neurocodec.npy; `from neurocodec import
            # __version__` on the package itself.
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                names.add(submodule if _exists(submodule) else node.module)
    return {n for n in names if n == "neurocodec" or n.startswith("neurocodec.")}


def layer_of(name: str) -> str:
    """The layer module `name` belongs to: a named group, else its package
    (`neurocodec.storage.cache` -> `neurocodec.storage`)."""
    for layer, members in (("leaf", LEAVES), ("nwb-protocol", NWB_PROTOCOL)):
        if name in members:
            return layer
    return ".".join(name.split(".")[:2])


def violations(module: str, imports: set[str]) -> set[str]:
    """The layers `module` imports that its own layer may not."""
    allowed = MAY_IMPORT.get(layer_of(module))
    if allowed is None:
        return set()
    return {layer_of(n) for n in imports if _exists(n)} - allowed


def _exists(name: str) -> bool:
    """True for a neurocodec module or package (not a name imported from one)."""
    relative = Path(*name.split(".")[1:]) if name != "neurocodec" else Path()
    return name == "neurocodec" or (ROOT / relative).with_suffix(".py").exists() or (ROOT / relative / "__init__.py").exists()


def test_every_layer_below_the_command_line_imports_only_downwards() -> None:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        module = module_name(path)
        bad = violations(module, imported(path))
        if bad:
            found[module] = bad
    unexpected = {m: bad for m, bad in found.items() if bad - PENDING.get(m, set())}
    assert not unexpected, f"imports against the layers: {unexpected}"
    stale = {m: PENDING[m] - found.get(m, set()) for m in PENDING if PENDING[m] - found.get(m, set())}
    assert not stale, f"PENDING lists imports these modules no longer make; remove them: {stale}"


def test_the_check_sees_function_level_and_type_checking_imports(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from neurocodec.plugin.registry import Registry\n"
                      "def f():\n    import neurocodec.storage.cache\n    from neurocodec.dataset import reader\n")
    names = imported(source)
    assert {"neurocodec.plugin.registry", "neurocodec.storage.cache", "neurocodec.dataset.reader"} <= names
    assert violations("neurocodec.format.probe", names) == {"neurocodec.plugin", "neurocodec.storage",
                                                             "neurocodec.dataset"}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module in `graph` (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in graph.get(module, ()):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(sorted(group))

    for module in graph:
        if module not in index:
            visit(module)
    return groups


def test_no_import_cycles() -> None:
    """No two modules import each other, directly or round a loop, not even inside functions."""
    graph = {}
    for path in sorted(ROOT.rglob("*.py")):
        module = module_name(path)
        graph[module] = {n for n in imported(path) if _exists(n) and n != module and n != "neurocodec"}
    assert import_cycles(graph) == []
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
