"""What the converter extracts: the fields, the modality of each, and the series each comes from.

Three ways to say it, combined into one plan:

- `modalities`: modality names (each extracted into the field of its name) or a mapping of field
  name to modality (`{"pupil": "behavior"}`);
- `fields`: field name to `(modality, series)`, where series is a name or HDF5 path, a list of
  1-D series sharing their timing (combined into columns), or None for the modality's default
  (`{"position": ("behavior", ["x", "y", "z"]), "running": ("behavior", "running_speed")}`); a
  bare modality name stands for `(modality, None)`;
- `series`: field name to a series name, path or list, for fields named by `modalities`.

With `fields` and no `modalities`, only the fields are converted (the default modalities are not
added). A field named twice, or a series given twice for one field, is a ValueError.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from neurocodec.dataset.schema import check_field_modalities
from neurocodec.plugin.registry import Registry

DEFAULT_MODALITIES = ("spikes", "lfp", "behavior")
SeriesChoice = str | tuple[str, ...]


def names(what: str, given: str | Sequence[str]) -> tuple[str, ...]:
    """A list of non-empty names (a lone str is one name)."""
    if isinstance(given, str):
        given = [given]
    try:
        result = tuple(given)
    except TypeError:
        raise ValueError(f"{what} must be a list of names, got {given!r}") from None
    if not all(isinstance(n, str) and n for n in result):
        raise ValueError(f"{what} must be a list of names, got {given!r}")
    return result


def series_choice(field: str, choice: Any) -> SeriesChoice:
    """A series given for `field`: a name or path, or a non-empty list of them (kept as a tuple)."""
    if isinstance(choice, str) and choice:
        return choice
    if isinstance(choice, (list, tuple)) and choice:
        return names(f"the series of field {field!r}", choice)
    raise ValueError(f"the series of field {field!r} must be a name, an HDF5 path or a list of them, "
                     f"got {choice!r}")


def _modality_map(modalities: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    if isinstance(modalities, str):
        modalities = [modalities]
    if isinstance(modalities, Mapping):
        return dict(modalities)
    return {m: m for m in modalities}


def _split_fields(fields: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, SeriesChoice]]:
    """`fields` as field -> modality and field -> series (only where one is given)."""
    if not isinstance(fields, Mapping):
        raise ValueError(f"fields must map field names to (modality, series), got {type(fields).__name__}")
    modality_of, series = {}, {}
    for field, spec in fields.items():
        if isinstance(spec, str):
            spec = (spec, None)
        if not (isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str)):
            raise ValueError(f"fields[{field!r}] must be (modality, series) or a modality name, got {spec!r}")
        modality_of[field] = spec[0]
        if spec[1] is not None:
            series[field] = series_choice(field, spec[1])
    return modality_of, series


def plan_fields(modalities: Sequence[str] | Mapping[str, str] | None, fields: Mapping[str, Any] | None,
                series: Mapping[str, Any] | None,
                registry: Registry) -> tuple[dict[str, str], dict[str, SeriesChoice]]:
    """(field -> modality, field -> series) for the converter, checked: valid field names, known
    modalities (UnknownModalityError listing the installed ones), series only for converted fields."""
    if modalities is None:
        modalities = () if fields else DEFAULT_MODALITIES
    modality_of = _modality_map(modalities)
    from_fields, chosen = _split_fields(fields or {})
    twice = sorted(set(modality_of) & set(from_fields))
    if twice:
        raise ValueError(f"fields {twice} are named both in modalities and in fields; name each once")
    modality_of.update(from_fields)
    if not modality_of:
        raise ValueError("modalities (or fields) must name at least one field to convert")
    for field, choice in (series or {}).items():
        if field in chosen:
            raise ValueError(f"the series of field {field!r} is given both in fields and in series")
        chosen[field] = series_choice(field, choice)
    unknown = sorted(set(chosen) - set(modality_of))
    if unknown:
        raise ValueError(f"series names fields that are not converted: {unknown}")
    return check_field_modalities(modality_of, registry), chosen
