"""The plugin system: discovery through entry points, isolation, conflicts, switches, docs."""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

import neurocodec.plugin as plugin_api
from neurocodec import Dataset, WebDatasetWriter
from neurocodec.plugin import hookspecs
from neurocodec.errors import DuplicateRegistrationError, PluginError, PluginLoadError, UnknownCodecError
from neurocodec.plugin import Codec, ModalitySpec, NpyCodec, ArrayPolicy, hookimpl
from neurocodec.plugin.manager import ENTRY_POINT_GROUP, load_registry
from neurocodec.testing import assert_round_trip, registry_with

BUILT_INS = {"generic", "spikes", "lfp", "eeg", "fmri", "video", "behavior", "calcium"}


def _run(code: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NEUROCODEC_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                          cwd=cwd, timeout=120)


# -- small in-test plugins -----------------------------------------------------------------------

class DeltaCodec(Codec):
    """Integer arrays stored as first differences (a toy third-party codec)."""

    codec_id = "test-delta"
    kind = "array"
    extension = "npy"

    def encode(self, value):
        """Difference along axis 0, as .npy."""
        return NpyCodec().encode(np.diff(value, axis=0, prepend=0))

    def decode(self, data, field):
        """Cumulative sum back."""
        return np.cumsum(NpyCodec().decode(data, field), axis=0, dtype=np.dtype(field.dtype))


def _codec_plugin(codec=DeltaCodec):
    @hookimpl
    def neurocodec_register_codecs(register):
        register(codec)

    return types.SimpleNamespace(neurocodec_register_codecs=neurocodec_register_codecs)


def _modality_plugin(name, codec_id="npy"):
    @hookimpl
    def neurocodec_register_modalities(register):
        register(ModalitySpec(name=name, codec={"id": codec_id}, prepare=ArrayPolicy(kinds="iu")))

    return types.SimpleNamespace(neurocodec_register_modalities=neurocodec_register_modalities)


class PhotometryPlugin:
    """A whole plugin as a class: its codec and a modality using it."""

    @hookimpl
    def neurocodec_register_codecs(self, register):
        register(DeltaCodec)

    @hookimpl
    def neurocodec_register_modalities(self, register):
        register(ModalitySpec(name="photometry", codec={"id": "test-delta"}, prepare=ArrayPolicy(kinds="iu")))


# -- discovery ---------------------------------------------------------------------------------

def test_built_ins_come_through_the_entry_point_group():
    eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    ours = {ep.name: ep for ep in eps if ep.dist is not None and ep.dist.name == "neurocodec"}
    assert set(ours) == BUILT_INS
    assert all(ep.value == f"neurocodec_plugins.{name}" for name, ep in ours.items())
    registry = load_registry()
    infos = {p.name: p for p in registry.plugins()}
    assert BUILT_INS <= set(infos)
    version = importlib.metadata.version("neurocodec")
    assert all((infos[n].distribution, infos[n].version) == ("neurocodec", version) for n in BUILT_INS)
    assert set(registry.modality_names(fallbacks=False)) >= {"spikes", "lfp", "eeg", "fmri", "video", "behavior"}
    assert registry.modality_plugin("video").name == "video"
    assert registry.codec_ids("generic") == ["bytes", "json", "ndarray", "npy", "scaled-int", "text"]
    assert registry.filter_ids("generic") == ["delta", "lz4", "shuffle", "zlib", "zstd"]
    assert load_registry(entry_points=False).plugins() == []


def test_import_neurocodec_loads_no_plugin_and_no_torch():
    code = """
import json, sys
import neurocodec
print(json.dumps(sorted(sys.modules)))
"""
    result = _run(code)
    assert result.returncode == 0, result.stderr
    modules = json.loads(result.stdout)
    loaded = [m for m in modules if m.split(".")[0] in ("torch", "neurocodec_plugins", "pluggy", "pynwb")]
    assert loaded == []
    assert [m for m in modules if m.startswith("neurocodec")] == ["neurocodec"]


def test_registry_with_adds_plugins_in_isolation(tmp_path, rng):
    registry = registry_with(PhotometryPlugin())
    assert "photometry" in registry.modality_names() and "spikes" in registry.modality_names()
    assert registry.codec_plugin("test-delta").name == "test-plugin-0"
    assert "photometry" not in load_registry().modality_names()
    samples = [{"photometry": rng.integers(-1000, 1000, (6, 3))} for _ in range(4)]
    assert_round_trip(samples, tmp_path, registry=registry, compression="zstd")


# -- conflicts and failures ----------------------------------------------------------------------

def test_duplicate_modality_across_two_plugins_names_both():
    with pytest.raises(DuplicateRegistrationError, match=r"modality 'photometry'.*plugin 'first'.*plugin 'second'"):
        load_registry(entry_points=False, plugins=[
            ("first", _modality_plugin("photometry")), ("second", _modality_plugin("photometry")),
            ("core", _codec_plugin(NpyCodec)),
        ])


def test_duplicate_of_a_built_in_modality_names_both():
    with pytest.raises(DuplicateRegistrationError, match="modality 'spikes' is registered by plugin") as info:
        load_registry(plugins=[("my-spikes", _modality_plugin("spikes"))])
    assert "plugin 'spikes' (neurocodec " in str(info.value) and "plugin 'my-spikes'" in str(info.value)


def test_duplicate_codec_id_across_two_plugins_names_both():
    with pytest.raises(DuplicateRegistrationError, match=r"codec id 'test-delta'.*plugin 'a'.*plugin 'b'"):
        load_registry(entry_points=False, plugins=[("a", _codec_plugin()), ("b", _codec_plugin())])
    with pytest.raises(DuplicateRegistrationError, match=r"codec id 'npy'.*plugin 'generic'.*plugin 'mine'"):
        load_registry(plugins=[("mine", _codec_plugin(NpyCodec))])


def test_two_plugins_with_one_name():
    with pytest.raises(PluginError, match="two plugins are named 'x'"):
        load_registry(entry_points=False, plugins=[("x", _codec_plugin()), ("x", _modality_plugin("m"))])


def test_a_hook_that_raises_names_its_plugin():
    @hookimpl
    def neurocodec_register_modalities(register):
        raise KeyError("boom")

    broken = types.SimpleNamespace(neurocodec_register_modalities=neurocodec_register_modalities)
    with pytest.raises(PluginError, match=r"plugin 'broken' .*neurocodec_register_modalities: KeyError: 'boom'"):
        load_registry(plugins=[("broken", broken)])


def test_modality_naming_an_unregistered_codec():
    with pytest.raises(PluginError, match=r"modality 'photometry' of plugin 'p' uses codec 'nope', which no plugin"):
        load_registry(plugins=[("p", _modality_plugin("photometry", codec_id="nope"))])


@pytest.mark.parametrize("value, message", [
    (object(), "not a Codec subclass"), (NpyCodec(), "not a Codec subclass"),
])
def test_registering_a_non_codec(value, message):
    with pytest.raises(PluginError, match=rf"plugin 'odd' registered .*{message}"):
        load_registry(entry_points=False, plugins=[("odd", _codec_plugin(value))])


def test_registering_a_non_spec():
    @hookimpl
    def neurocodec_register_modalities(register):
        register({"name": "photometry"})

    with pytest.raises(PluginError, match="plugin 'odd' registered .*not a ModalitySpec"):
        odd = types.SimpleNamespace(neurocodec_register_modalities=neurocodec_register_modalities)
        load_registry(plugins=[("odd", odd)])


# -- switches -----------------------------------------------------------------------------------

def test_disable_a_plugin(tmp_path):
    registry = load_registry(disabled=["video"])
    assert "video" not in registry.modality_names() and "video" not in [p.name for p in registry.plugins()]
    assert "spikes" in registry.modality_names()
    assert load_registry(disabled=["neurocodec"]).plugins() == []  # by distribution name
    # Without the plugin, a "video" field falls back to generic storage: float frames are accepted.
    w = WebDatasetWriter(tmp_path / "ds", registry=registry, fsync=False)
    w.write_sample({"video": np.zeros((2, 3, 3), dtype=np.float32)})
    assert w.finalize()["samples"] == 1
    assert Dataset(tmp_path / "ds", registry=registry).fields[0].modality == "array"


def test_disable_plugins_environment_variable():
    code = "from neurocodec.plugin.manager import default_registry as r; print(','.join(r().modality_names()))"
    names = _run(code, {"NEUROCODEC_DISABLE_PLUGINS": "video, eeg"}).stdout.strip().split(",")
    assert "video" not in names and "eeg" not in names and "spikes" in names
    assert "video" in _run(code).stdout.strip().split(",")


def test_trace_plugins_logs_registrations():
    code = "from neurocodec.plugin.manager import load_registry; load_registry()"
    traced = _run(code, {"NEUROCODEC_TRACE_PLUGINS": "1"})
    assert traced.returncode == 0
    assert "plugin spikes registered modality 'spikes' (codec 'npy')" in traced.stderr
    assert "plugin generic registered codec 'json'" in traced.stderr
    assert _run(code).stderr == ""
    assert _run(code, {"NEUROCODEC_TRACE_PLUGINS": "0"}).stderr == ""


def _fake_distribution(root: Path, name: str, entry_points: dict[str, str], module: str = "") -> None:
    """An installed distribution on a path entry: dist-info metadata and entry points (real discovery)."""
    info = root / f"{name.replace('-', '_')}-1.2.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[neurocodec.plugins]\n{lines}")
    if module:
        (root / f"{name.replace('-', '_')}.py").write_text(textwrap.dedent(module))


def test_entry_point_plugin_that_fails_to_import_names_its_distribution(tmp_path):
    _fake_distribution(tmp_path, "neurocodec-broken", {"broken": "neurocodec_broken"},
                       module="raise ImportError('needs libfoo')\n")
    code = "from neurocodec.plugin.manager import load_registry; print(len(load_registry().plugins()))"
    env = {"PYTHONPATH": str(tmp_path)}
    result = _run(code, env)
    assert result.returncode != 0
    assert "PluginLoadError: plugin 'broken' from distribution neurocodec-broken 1.2 failed to import" in result.stderr
    assert "needs libfoo" in result.stderr and "NEUROCODEC_DISABLE_PLUGINS=broken" in result.stderr
    assert _run(code, {**env, "NEUROCODEC_DISABLE_PLUGINS": "broken"}).stdout.strip() == str(len(BUILT_INS))
    cli = _run("import sys; from neurocodec.cli import main; sys.exit(main(['plugins']))", env)
    assert cli.returncode == 1 and cli.stdout == "" and cli.stderr.count("\n") == 1
    assert cli.stderr.startswith("neurocodec plugins: error: plugin 'broken' from distribution neurocodec-broken")
    cli = _run("import sys; from neurocodec.cli import main; sys.exit(main(['plugins']))",
               {**env, "NEUROCODEC_DISABLE_PLUGINS": "broken"})
    assert cli.returncode == 0 and "disabled by NEUROCODEC_DISABLE_PLUGINS: broken" in cli.stdout


def test_entry_point_plugin_duplicating_a_built_in_names_both_distributions(tmp_path):
    _fake_distribution(tmp_path, "neurocodec-spikes2", {"spikes2": "neurocodec_spikes2"}, module="""
        from neurocodec.plugin import ArrayPolicy, ModalitySpec, hookimpl

        @hookimpl
        def neurocodec_register_modalities(register):
            register(ModalitySpec(name="spikes", codec={"id": "npy"}, prepare=ArrayPolicy()))
    """)
    result = _run("from neurocodec.plugin.manager import load_registry; load_registry()", {"PYTHONPATH": str(tmp_path)})
    assert result.returncode != 0
    assert ("DuplicateRegistrationError: modality 'spikes' is registered by plugin 'spikes' (neurocodec "
            in result.stderr)
    assert "and by plugin 'spikes2' (neurocodec-spikes2 1.2)" in result.stderr


def test_plugin_load_error_type():
    assert issubclass(PluginLoadError, PluginError)


# -- unknown codecs in a dataset -----------------------------------------------------------------

def test_dataset_with_unknown_codec_says_what_to_install(tmp_path, rng):
    out = tmp_path / "ds"
    registry = registry_with(("photometry", PhotometryPlugin()))
    with WebDatasetWriter(out, registry=registry, fsync=False) as w:
        w.write_sample({"photometry": rng.integers(0, 9, (4, 2))})
    with pytest.raises(UnknownCodecError, match=r"codec 'test-delta' \(field 'photometry'\).*plugin 'photometry'"):
        Dataset(out)  # the installed plugins only
    # As an entry-point plugin would have recorded it: its distribution and version.
    manifest_path = out / ".neurocodec" / "dataset_metadata.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["fields"][0].update(distribution="neurocodec-photometry", plugin_version="1.2")
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(UnknownCodecError, match=r"install the plugin that provides it: plugin 'photometry' "
                                                r"\(pip install neurocodec-photometry==1\.2\)"):
        Dataset(out)
    assert len(Dataset(out, registry=registry)) == 1


# -- documentation -------------------------------------------------------------------------------

def test_every_hook_spec_is_documented_and_typed():
    specs = [f for _, f in inspect.getmembers(hookspecs, inspect.isfunction)
             if hasattr(f, f"{hookspecs.PROJECT}_spec")]
    assert {f.__name__ for f in specs} == {
        "neurocodec_register_codecs", "neurocodec_register_modalities", "neurocodec_nwb_extractor"}
    pm = load_registry().plugin_manager
    assert {f.__name__ for f in specs} == {n for n in dir(pm.hook) if n.startswith("neurocodec_")}
    for spec in specs:
        doc = inspect.getdoc(spec)
        assert doc and len(doc.split()) >= 10, f"hook {spec.__name__} needs a docstring"
        sig = inspect.signature(spec)
        assert all(p.annotation is not inspect.Parameter.empty for p in sig.parameters.values()), spec.__name__
        assert sig.return_annotation is not inspect.Signature.empty, spec.__name__


def _attribute_docstrings(module: types.ModuleType) -> dict[str, str]:
    """`NAME = ...` followed by a string literal: the attribute docstring convention."""
    tree = ast.parse(Path(module.__file__).read_text())
    docs = {}
    for node, nxt in zip(tree.body, tree.body[1:]):
        if (isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Name):
                    docs[target.id] = nxt.value.value
    return docs


def test_every_public_name_of_the_plugin_api_is_documented():
    assert plugin_api.__doc__
    sources = {}
    for node in ast.parse(Path(plugin_api.__file__).read_text()).body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                sources[alias.name] = node.module
    missing = []
    for name in plugin_api.__all__:
        obj = getattr(plugin_api, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            if not (vars(obj).get("__doc__") if inspect.isclass(obj) else obj.__doc__):
                missing.append(name)
            if inspect.isclass(obj):
                missing += [f"{name}.{attr}" for attr, value in vars(obj).items()
                            if not attr.startswith("_") and (inspect.isfunction(value) or isinstance(value, property))
                            and not value.__doc__]
        else:
            # Type aliases need their own attribute docstring; instances (hookimpl) may use their class's.
            doc = _attribute_docstrings(importlib.import_module(sources[name])).get(name)
            if not doc and type(obj).__module__ != "typing":
                doc = inspect.getdoc(obj)
            if not doc:
                missing.append(name)
    assert missing == []
    import neurocodec.testing as testing_api
    assert [n for n in testing_api.__all__ if not getattr(testing_api, n).__doc__] == []
