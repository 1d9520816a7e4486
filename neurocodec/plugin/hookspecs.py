"""Every hook a neurocodec plugin can implement: the plugin author's reference.

A plugin is a module (or object) with functions decorated by `neurocodec.plugin.hookimpl`,
exposed under the entry-point group `neurocodec.plugins` in its distribution's metadata::

    [project.entry-points."neurocodec.plugins"]
    photometry = "neurocodec_photometry.plugin"

neurocodec's own modalities (spikes, lfp, eeg, fmri, video, behavior, calcium, and the generic fallback)
are registered the same way, from the package `neurocodec_plugins`.

Registration hooks receive a registrar bound to the calling plugin, so the registry knows which
plugin supplied what and can reject a duplicate modality name or codec id naming both plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    from neurocodec.plugin.codecs import Codec
    from neurocodec.plugin.modality import ModalitySpec

PROJECT = "neurocodec"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class CodecRegistrar(Protocol):
    """What `neurocodec_register_codecs` receives: call it once per codec class."""

    def __call__(self, codec: "type[Codec]") -> None:
        """Register a Codec subclass under its `codec_id`."""


class ModalityRegistrar(Protocol):
    """What `neurocodec_register_modalities` receives: call it once per modality."""

    def __call__(self, spec: "ModalitySpec") -> None:
        """Register a modality spec under its `name`."""


@hookspec
def neurocodec_register_codecs(register: CodecRegistrar) -> None:
    """Register the codec classes this plugin provides.

    Call `register(CodecClass)` for each; the class's `codec_id` must be unique across every
    installed plugin (a clash is an error naming both plugins). The id is stored in each
    dataset's manifest, so never change what an existing id means: give a new encoding a new id.
    """


@hookspec
def neurocodec_register_modalities(register: ModalityRegistrar) -> None:
    """Register the modalities this plugin provides.

    Call `register(ModalitySpec(...))` for each; the name must be unique across every installed
    plugin. The spec's codec config must name a codec registered by some plugin.
    """


@hookspec(firstresult=True)
def neurocodec_nwb_extractor(modality: str) -> Any:
    """Return the object that reads `modality` from NWB files, or None if it is not yours.

    The first non-None answer wins. The returned extractor implements the protocol documented
    in `neurocodec.nwb` (find the series in an open NWB file and read aligned windows from it);
    it returns nothing for NWB content it does not handle and raises a neurocodec error, naming
    the file and the object, for content it handles but cannot read.
    """
