"""The writer's view of a dataset's fields: chosen on the first sample, enforced on the rest.

Every sample must carry the same fields (webdataset, Ray Data and Hugging Face datasets infer a
schema from the first samples and drop fields that appear later), each field keeps one modality,
one dtype (one of `neurocodec.npy.DTYPES`, whatever codec stores it) and one number of
dimensions; axes whose length changes between samples are recorded as variable (None) in the
manifest.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from neurocodec import npy
from neurocodec.plugin.codecs import Codec
from neurocodec.errors import UnknownModalityError
from neurocodec.format import layout
from neurocodec.format.manifest import FieldSpec
from neurocodec.plugin.modality import ModalitySpec
from neurocodec.plugin.registry import Registry


class FieldState:
    """What the writer knows of one field so far."""

    def __init__(self, name: str, spec: ModalitySpec, codec: Codec, registry: Registry) -> None:
        self.name = name
        self.spec = spec
        self.codec = codec
        self.plugin = registry.modality_plugin(spec.name)
        self.dtype: np.dtype | None = None
        self.shape: list[int | None] | None = None
        self.max_raw = 0
        self.max_stored = 0
        self.max_value = 0  # bytes of the largest decoded array (declared when above max_raw)

    def check(self, value: Any) -> str | None:
        """Why `value` (prepared) does not fit this field, or None. Does not change state."""
        if self.codec.kind != "array":
            return None
        form = self.codec.describe_value(value)
        if form is None and isinstance(value, np.ndarray):
            return (f"codec {self.codec.codec_id!r} of this field does not store a plain array (got ndarray): "
                    "give it the value it stores (see its documentation) or choose another codec")
        if form is None:
            return (f"expected an array like earlier samples, got {type(value).__name__}, which codec "
                    f"{self.codec.codec_id!r} of this field does not store: give the field a codec that does "
                    f"(WebDatasetWriter(codecs={{{self.name!r}: {{'id': ...}}}}))")
        dtype, shape = np.dtype(form[0]), tuple(form[1])
        if dtype.str not in npy.DTYPES:  # what readers accept, as the manifest records it
            return (f"dtype {dtype} ({dtype.str}) is not one this format stores "
                    f"({', '.join(npy.DTYPES)}; little-endian)")
        if self.dtype is not None and dtype != self.dtype:
            return f"dtype {dtype} differs from {self.dtype} in earlier samples"
        if self.shape is not None and len(shape) != len(self.shape):
            return f"shape {shape} has {len(shape)} dimensions, earlier samples have {len(self.shape)}"
        return None

    def update(self, value: Any, raw: int, stored: int) -> None:
        """Account for a written value."""
        self.max_raw = max(self.max_raw, raw)
        self.max_stored = max(self.max_stored, stored)
        if self.codec.kind != "array":
            return
        dtype, shape = self.codec.describe_value(value)
        dtype = np.dtype(dtype)
        self.max_value = max(self.max_value, dtype.itemsize * int(np.prod(shape, dtype=np.int64)))
        if self.dtype is None:
            self.dtype, self.shape = dtype, list(shape)
        else:
            self.shape = [d if d == n else None for d, n in zip(self.shape, shape)]

    def field_spec(self) -> FieldSpec:
        """The manifest entry for this field."""
        return FieldSpec(
            name=self.name, modality=self.spec.name, kind=self.codec.kind, codec=self.codec.get_config(),
            extension=self.codec.extension, plugin=self.plugin.name, plugin_version=self.plugin.version,
            distribution=self.plugin.distribution,
            dtype=None if self.dtype is None else self.dtype.str,
            shape=None if self.shape is None else tuple(self.shape),
            max_raw_bytes=self.max_raw, max_stored_bytes=self.max_stored,
            max_value_bytes=self.max_value if self.codec.declares_value_bytes and self.max_value > self.max_raw else 0,
        )


def check_field_modalities(modalities: Mapping[str, str] | None, registry: Registry) -> dict[str, str]:
    """Validate a field-to-modality mapping (`{"pupil_left": "behavior"}`) and return it as a dict.

    Keys must be valid field names and values registered modality names: an unknown one is an
    UnknownModalityError naming it and listing the installed modalities.
    """
    if modalities is None:
        return {}
    if not isinstance(modalities, Mapping):
        raise TypeError(f"modalities must map field names to modality names, got {type(modalities).__name__}")
    checked = {}
    for field, modality in modalities.items():
        problem = layout.field_name_problem(field)
        if problem:
            raise ValueError(f"modalities: {problem}")
        if not isinstance(modality, str):
            raise TypeError(f"modalities[{field!r}] must be a modality name, got {type(modality).__name__}")
        try:
            registry.modality(modality)
        except UnknownModalityError as exc:
            raise UnknownModalityError(f"modalities[{field!r}]: {exc}") from None
        checked[field] = modality
    return checked


def check_field_codecs(codecs: Mapping[str, Mapping[str, Any]] | None, registry: Registry) -> dict[str, Codec]:
    """Validate a field-to-codec mapping (`{"lfp": {"id": "ndarray", "filters": [...]}}`) and
    return the codecs it names, built from their configs.

    Keys must be valid field names; each value is a codec config, a mapping with a string `id`
    of a registered codec, which must accept the rest of the config (UnknownCodecError naming the
    field otherwise).
    """
    if codecs is None:
        return {}
    if not isinstance(codecs, Mapping):
        raise TypeError(f"codecs must map field names to codec configs, got {type(codecs).__name__}")
    built = {}
    for field, config in codecs.items():
        problem = layout.field_name_problem(field)
        if problem:
            raise ValueError(f"codecs: {problem}")
        if not isinstance(config, Mapping) or not isinstance(config.get("id"), str):
            raise TypeError(f"codecs[{field!r}] must be a codec config, a mapping with a string 'id' "
                            f"(e.g. {{'id': 'npy'}}), got {config!r}")
        built[field] = registry.codec(dict(config), field=field)
    return built


class Schema:
    """The ordered fields of a dataset, fixed by its first sample.

    A field takes the modality `modalities` maps it to (already checked by
    `check_field_modalities`), else the modality registered under its name, else a fallback. It
    is stored with the codec `codecs` gives it (built by `check_field_codecs`), else its
    modality's, which must be of the same kind (an array modality keeps an array codec).
    """

    def __init__(self, registry: Registry, options: Mapping[str, Mapping[str, Any]],
                 modalities: Mapping[str, str] | None = None, codecs: Mapping[str, Codec] | None = None) -> None:
        self.registry = registry
        self.options = options
        self.modalities = dict(modalities or {})
        self.codecs = dict(codecs or {})
        self.fields: dict[str, FieldState] | None = None
        self.metadata = FieldState(
            layout.METADATA_FIELD, registry.resolve(layout.METADATA_FIELD, {}),
            registry.codec({"id": "json"}), registry,
        )

    def start(self, sample: Mapping[str, Any]) -> None:
        """Fix the field set from the first sample (sorted by name for a stable layout)."""
        fields = {}
        for name in sorted(sample):
            spec = self.registry.resolve(name, sample[name], modality=self.modalities.get(name))
            fields[name] = FieldState(name, spec, self._codec(name, spec), self.registry)
        for what, given in (("modalities", self.modalities), ("modality_options", self.options),
                            ("codecs", self.codecs)):
            unknown = set(given) - set(fields)
            if unknown:
                raise ValueError(f"{what} name fields no sample has: {sorted(unknown)}")
        for name, options in self.options.items():
            spec = fields[name].spec
            bad = sorted(set(options) - set(spec.options))
            if bad:
                known = ", ".join(sorted(spec.options)) or "none"
                raise ValueError(f"modality_options[{name!r}] has unknown option(s) {bad} for modality "
                                 f"{spec.name!r} (known: {known})")
        self.fields = fields

    def _codec(self, name: str, spec: ModalitySpec) -> Codec:
        default = self.registry.codec(spec.codec, field=name)
        chosen = self.codecs.get(name, default)
        if chosen.kind != default.kind:
            raise ValueError(f"codecs[{name!r}]: codec {chosen.codec_id!r} stores {chosen.kind} values, and "
                             f"modality {spec.name!r} gives {default.kind} values (its codec is "
                             f"{default.codec_id!r}): choose a codec of kind {default.kind!r}")
        return chosen

    def field_order(self) -> list[FieldState]:
        """Fields in member order, metadata last."""
        return [*self.fields.values(), self.metadata]

    def field_specs(self) -> tuple[FieldSpec, ...]:
        """Manifest entries in member order."""
        return tuple(f.field_spec() for f in self.field_order())
