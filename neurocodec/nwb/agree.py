"""Parts that store a field differently: which fields, and which parts must be converted again.

Each file is converted into a part of its own, with the codecs its data calls for: an int16
series with a scale keeps its integers (`scaled-int`, raw dtype int16), a float32 one is stored
as `.npy`. Parts merge only where every field has one codec config, so when files disagree the
converter converts the parts that use a neural codec for such a field again with that field
plain (`ConvertSettings.plain_fields`): every part then stores it as `.npy` of the values it
decodes to, the same float32 physical values as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from neurocodec.format.home import manifest_path


def part_codecs(part: Path) -> dict[str, dict[str, Any]]:
    """Each field's codec config in the manifest of the part dataset `part`."""
    doc = json.loads(manifest_path(part).read_text(encoding="utf8"))
    return {f["name"]: f["codec"] for f in doc["fields"]}


def disagreeing_fields(parts: Sequence[Path]) -> list[str]:
    """The fields whose codec config is not the same in every part, sorted."""
    configs = [part_codecs(p) for p in parts]
    names = set().union(*configs) if configs else set()
    return sorted(n for n in names if len({json.dumps(c.get(n), sort_keys=True) for c in configs}) > 1)


def parts_to_redo(parts: Sequence[Path], fields: Sequence[str]) -> list[int]:
    """Positions of the parts storing one of `fields` with another codec than plain `npy`."""
    redo = []
    for i, part in enumerate(parts):
        configs = part_codecs(part)
        if any(configs.get(f, {}).get("id") != "npy" for f in fields):
            redo.append(i)
    return redo


def describe(parts: Sequence[Path], fields: Sequence[str]) -> str:
    """'lfp (scaled-int in 1 file, npy in 1)' for a warning."""
    words = []
    for f in fields:
        ids = [part_codecs(p).get(f, {}).get("id", "missing") for p in parts]
        counts = ", ".join(f"{i} in {ids.count(i)} file{'s' * (ids.count(i) != 1)}" for i in sorted(set(ids)))
        words.append(f"{f} ({counts})")
    return "; ".join(words)
