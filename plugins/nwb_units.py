"""The Units table's per-unit columns, stored once per session next to the spike counts.

`unit_columns` keeps every column of one scalar per unit (numbers, booleans, text; NaN as null),
`electrode_group` as the group's name and `electrodes` as lists of electrode ids (rows of the
session's electrodes table), read with `neurocodec.nwb.table_columns`; ragged columns (values
per spike) and multi-dimensional ones (waveforms) are left out and listed with the reason.
`location` is every unit's brain region: the table's own `location` when it has one that is not
empty, else its electrode group's location, else its electrodes' locations (joined by ", "
when they differ), else null.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from neurocodec.nwb import table_columns

READ_AS_SPIKES = ("spike_times", "obs_intervals")  # the counts and the mask, not columns


def unit_columns(units: Any) -> tuple[dict[str, list], dict[str, str], dict[str, int]]:
    """The Units table's per-unit columns, JSON-ready, each a list in unit (= counts column) order,
    with the columns left out (and why) and how many units' `location` came from each source."""
    columns, skipped = table_columns(units, exclude=READ_AS_SPIKES)
    regions: dict[str, list] = {}
    if "electrode_group" in columns:
        regions["electrode_group"] = [str(group.location) for group in units["electrode_group"].data[:]]
    if "electrodes" in columns:
        regions["electrodes"] = _electrode_locations(units["electrodes"].target.table, columns["electrodes"])
    columns["location"], location_from = _locations(len(units), columns.get("location"), regions)
    return columns, skipped, location_from


def _electrode_locations(table: Any, per_unit: list[list[int]]) -> list[str]:
    """Each unit's electrodes' locations, joined by ", " (each once, in order; empty ones left out)."""
    if "location" not in table.colnames:
        return [""] * len(per_unit)
    ids = np.asarray(table.id.data[:], dtype=np.int64).tolist()
    where = dict(zip(ids, (str(v.decode() if isinstance(v, bytes) else v) for v in table["location"].data[:])))
    return [", ".join(dict.fromkeys(where[i] for i in unit if where.get(i, "").strip())) for unit in per_unit]


def _locations(count: int, own: list | None, regions: Mapping[str, list]) -> tuple[list, dict[str, int]]:
    sources = [("location", own), ("electrode_group", regions.get("electrode_group")),
               ("electrodes", regions.get("electrodes"))]
    found: list = []
    tally = dict.fromkeys([name for name, _ in sources] + ["none"], 0)
    for unit in range(count):
        for name, values in sources:
            value = None if values is None else values[unit]
            if isinstance(value, str) and value.strip():
                found.append(value)
                tally[name] += 1
                break
        else:
            found.append(None)
            tally["none"] += 1
    return found, tally
