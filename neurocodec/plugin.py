"""The public API for plugin authors: everything a modality plugin needs, in one import.

A minimal plugin::

    from neurocodec.plugin import ArrayPolicy, ModalitySpec, hookimpl

    @hookimpl
    def neurocodec_register_modalities(register):
        register(ModalitySpec(name="calcium", codec={"id": "npy"}, prepare=ArrayPolicy(kinds="f")))

The hooks themselves are documented in `neurocodec.hookspecs`; `neurocodec.testing` has
round-trip checks for a plugin's own test suite.
"""

from neurocodec.codecs import (
    BytesCodec, Codec, CodecError, JsonCodec, NpyCodec, TextCodec, check_array, smallest_integer_dtype,
)
from neurocodec.collate import Collated, CollateRule, collate_arrays, collate_list
from neurocodec.format.manifest import FieldSpec
from neurocodec.hookspecs import CodecRegistrar, ModalityRegistrar, hookimpl
from neurocodec.modality import ArrayPolicy, ModalitySpec, Prepare, as_array

__all__ = [
    "ArrayPolicy", "BytesCodec", "Codec", "CodecError", "CodecRegistrar", "Collated", "CollateRule",
    "FieldSpec", "JsonCodec", "ModalityRegistrar", "ModalitySpec", "NpyCodec", "Prepare", "TextCodec",
    "as_array", "check_array", "collate_arrays", "collate_list", "hookimpl", "smallest_integer_dtype",
]
