"""What a plugin registers is checked when plugins load: a hook implementation whose name no
spec declares (a misspelling, silently never called otherwise) and a modality name that could
not be a field name are errors naming the plugin (issue 12, the plugin API)."""

from __future__ import annotations

import types

import pytest

from neurocodec.errors import PluginError
from neurocodec.plugin import ArrayPolicy, ModalitySpec, hookimpl
from neurocodec.plugin.manager import load_registry
from neurocodec.testing import registry_with


def _plugin(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook_name, function in hooks.items():
        setattr(module, hook_name, hookimpl(function))
    return module


def _pupil(name: str):
    def register_modalities(register) -> None:
        register(ModalitySpec(name=name, codec={"id": "npy", "pack_integers": False},
                              prepare=ArrayPolicy(), description="pupil diameter"))
    return register_modalities


def test_a_misspelled_hook_is_an_error_naming_the_plugin() -> None:
    typo = _plugin("typo_plugin", neurocodec_register_modalitys=_pupil("pupil"))
    with pytest.raises(PluginError, match=r"plugin 'typo' .*neurocodec_register_modalitys.*"
                                          r"neurocodec_register_modalities"):
        load_registry(entry_points=False, plugins=[("typo", typo)])


@pytest.mark.parametrize("name", ["Pupil.Diameter", "pupil.diameter", "Pupil", "metadata", "9lives", ""])
def test_a_modality_name_that_cannot_be_a_field_name_is_refused(name: str) -> None:
    bad = _plugin("bad_names", neurocodec_register_modalities=_pupil(name))
    with pytest.raises(PluginError, match=r"plugin 'bad' registered modality"):
        load_registry(plugins=[("bad", bad)])


def test_a_well_named_modality_registers() -> None:
    good = _plugin("good_names", neurocodec_register_modalities=_pupil("pupil_diameter"))
    registry = registry_with(good)
    assert "pupil_diameter" in registry.modality_names()
    assert registry.modality("pupil_diameter").description == "pupil diameter"


def test_registry_with_an_installed_plugin_holds_it_once() -> None:
    """Inside a plugin's own test suite its module is both installed and passed in."""
    import neurocodec_plugins.spikes as spikes

    registry = registry_with(spikes)
    assert registry.modality("spikes").description == load_registry().modality("spikes").description
    assert registry.modality_names() == load_registry().modality_names()
