"""What a reader decodes each field to: its codec, built from the manifest's config, and the
load-time decode options the user chose (`Dataset(decode={"spikes": {"bin_size_ms": 5}})`).

A field's codec config may say `"follows": "<field>"`: the options given for that field apply
to it too (the spike observation mask is binned like the spikes), unless it is given its own.
Only options a codec declares in `decode_options` are accepted, so a typo is an error at
opening, not a silently ignored setting.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import attrs

from neurocodec import npy
from neurocodec.errors import DatasetError
from neurocodec.format import layout
from neurocodec.format.manifest import FieldSpec
from neurocodec.plugin.codecs import Codec, CodecError
from neurocodec.plugin.registry import Registry
from neurocodec.plugin.windowing import WindowGrid

Decoder = Callable[[bytes | memoryview], Any]
_UINT64_MAX = 2**64 - 1


@attrs.frozen(slots=True)
class DecodePlan:
    """Per manifest field: its codec, the options it decodes with, its decoder, and the field as
    decoded (`FieldSpec` of the values the decoder returns, which loaders batch by)."""

    codecs: tuple[Codec, ...]
    options: tuple[Mapping[str, Any], ...]
    decoders: tuple[Decoder, ...]
    fields: tuple[FieldSpec, ...]
    cuts: tuple[Callable[..., Any] | None, ...] = ()
    """With a window grid: per field, how a window's value is cut from its chunks' decoded values
    (None for the metadata, which the loader joins itself)."""


def decode_plan(fields: tuple[FieldSpec, ...], registry: Registry, source: str,
                decode: Mapping[str, Mapping[str, Any]] | None = None, window: WindowGrid | None = None
                ) -> DecodePlan:
    """Build every field's codec from `fields` (the manifest's) and apply `decode`, the
    load-time options by field name. UnknownCodecError for a codec no plugin provides,
    DatasetError for a codec that does not fit its field, ValueError for options that name no
    field or that the field's codec does not take. With `window`, the plan decodes chunks to cut
    windows of that grid from (`fields` then describes a window's values; see `window_plan`)."""
    codecs = tuple(registry.codec(f.codec, field=f.name, plugin_hint=f.install_hint, source=source)
                   for f in fields)
    check_codecs(fields, codecs, source)
    chosen = field_options(fields, codecs, decode)
    if window is not None:
        return window_plan(fields, codecs, chosen, window)
    decoders, decoded = [], []
    for field, codec, options in zip(fields, codecs, chosen):
        if not options:
            try:
                decoders.append(codec.decoder(field))
            except (CodecError, ValueError, TypeError) as exc:
                raise DatasetError(f"{source}: field {field.name!r} cannot be decoded with codec "
                                   f"{field.codec_id!r}: {exc}") from None
            decoded.append(field)
            continue
        try:
            decoders.append(codec.decoder(field, options))
            decoded.append(codec.decoded_field(field, options))
        except (CodecError, ValueError, TypeError) as exc:
            raise ValueError(f"decode[{field.name!r}]: {exc}") from None
    return DecodePlan(codecs, chosen, tuple(decoders), tuple(decoded))


def window_plan(fields: tuple[FieldSpec, ...], codecs: tuple[Codec, ...], chosen: tuple[Mapping[str, Any], ...],
                window: WindowGrid) -> DecodePlan:
    """Each field as its codec reads it in windows (`Codec.windowed`); the metadata is decoded as
    usual and joined by the loader. ValueError naming the field that cannot be cut."""
    decoders, decoded, cuts = [], [], []
    for field, codec, options in zip(fields, codecs, chosen):
        if field.name == layout.METADATA_FIELD:
            decoders.append(codec.decoder(field))
            decoded.append(field)
            cuts.append(None)
            continue
        try:
            windowed = codec.windowed(field, options, window)
        except (CodecError, ValueError, TypeError) as exc:
            raise ValueError(f"field {field.name!r} cannot be read in windows of {window.window_bins} bins: "
                             f"{exc}") from None
        decoders.append(windowed.decoder)
        decoded.append(windowed.field)
        cuts.append(windowed.cut)
    return DecodePlan(codecs, chosen, tuple(decoders), tuple(decoded), tuple(cuts))


def field_options(fields: tuple[FieldSpec, ...], codecs: tuple[Codec, ...],
                  decode: Mapping[str, Mapping[str, Any]] | None) -> tuple[Mapping[str, Any], ...]:
    """The decode options of each field: its own from `decode`, else those of the field its codec
    config follows (only the names its codec takes); checked against `decode_options`."""
    decode = _checked_mapping(decode, fields)
    chosen = []
    for field, codec in zip(fields, codecs):
        options = decode.get(field.name)
        if options is None:
            leader = field.codec.get("follows")
            options = {k: v for k, v in decode.get(leader, {}).items() if k in codec.decode_options} \
                if isinstance(leader, str) else {}
        bad = sorted(set(options) - set(codec.decode_options))
        if bad:
            takes = ", ".join(sorted(codec.decode_options)) or "none"
            raise ValueError(f"decode[{field.name!r}]: codec {codec.codec_id!r} of this field takes no option(s) "
                             f"{bad} (it takes: {takes})")
        chosen.append(dict(options))
    return tuple(chosen)


def _checked_mapping(decode: Any, fields: tuple[FieldSpec, ...]) -> dict[str, Mapping[str, Any]]:
    if decode is None:
        return {}
    if not isinstance(decode, Mapping):
        raise TypeError(f"decode must map field names to option dicts, got {type(decode).__name__}")
    names = [f.name for f in fields]
    unknown = sorted(set(decode) - set(names))
    if unknown:
        raise ValueError(f"decode names fields this dataset does not have: {unknown} (fields: {', '.join(names)})")
    for name, options in decode.items():
        if not isinstance(options, Mapping):
            raise TypeError(f"decode[{name!r}] must be a dict of options, got {type(options).__name__}")
    return dict(decode)


def check_codecs(fields: tuple[FieldSpec, ...], codecs: tuple[Codec, ...], source: str) -> None:
    """A field's codec must decode the field's kind, an array field's dtype must be one of
    `npy.DTYPES` (the manifest parser checks it too; fields may also be built directly), and its
    size limits must fit the index's uint64 columns they are compared with."""
    for field, codec in zip(fields, codecs):
        if max(field.max_raw_bytes, field.max_stored_bytes, field.max_value_bytes) > _UINT64_MAX:
            raise DatasetError(f"{source}: field {field.name!r} declares sizes beyond 64 bits")
        if codec.kind != field.kind:
            raise DatasetError(f"{source}: field {field.name!r} is of kind {field.kind!r} but its codec "
                               f"{field.codec_id!r} decodes {codec.kind!r} values")
        # Membership only: the text never reaches np.dtype (which evaluates comma and shape strings).
        if field.kind == "array" and field.dtype not in npy.DTYPES:
            raise DatasetError(f"{source}: field {field.name!r} has dtype {str(field.dtype)[:40]!r}, "
                               f"which is not a dtype this format stores (one of {', '.join(npy.DTYPES)})")
