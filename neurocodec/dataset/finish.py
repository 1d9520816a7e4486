"""What a conversion may do once its dataset is written: make a split (`split=`, make_split's
arguments) and compute the normalisation statistics (`stats=True`) from the split's first
(training) part, or from every sample when no split was asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import attrs

from neurocodec.dataset.splits import SPLIT_DIR, SplitRule, make_split
from neurocodec.dataset.stats import stats_path
from neurocodec.dataset.stats_compute import compute_stats
from neurocodec.format.home import home

SPLIT_KEYS = ("by", "fractions", "seed", "folds", "fold", "guard_s", "name")
"""The keys `split=` may hold: `make_split`'s keyword arguments."""


@attrs.frozen
class Finish:
    """A conversion's `split=` (checked: make_split's keyword arguments) and `stats=`."""

    split: Mapping[str, Any] | None = None
    stats: bool = False

    @classmethod
    def of(cls, split: Any, stats: Any, *, append: bool, remote: bool) -> "Finish":
        """Checked before anything is converted: ValueError in the words of `split=` and `stats=`."""
        if not isinstance(stats, bool):
            raise ValueError(f"stats must be True or False, got {stats!r}")
        if split is None:
            if stats and remote:
                raise ValueError("stats=True needs a local output directory (statistics are written beside it)")
            return cls(None, stats)
        if not isinstance(split, Mapping) or any(k not in SPLIT_KEYS for k in split):
            raise ValueError(f"split must map some of {', '.join(SPLIT_KEYS)} (make_split's arguments) to values, "
                             f"got {split!r}")
        if remote or append:
            raise ValueError("split= needs a local output directory written anew (an appended dataset re-applies "
                             "the splits it has: neurocodec.refresh_splits)")
        # the rule's arguments now, not after a long conversion (guard_s is checked against the windows then)
        guard = split.get("guard_s")
        SplitRule.of(split.get("by", "session"), split.get("fractions"), split.get("seed", 0), split.get("folds"),
                     split.get("fold"), 0.0 if guard is None else guard)
        return cls(dict(split), stats)

    def run(self, path: Path) -> dict[str, str]:
        """Make the split and the statistics of the dataset at `path`; their files, for a summary."""
        done: dict[str, str] = {}
        chosen = None
        if self.split is not None:
            made = make_split(path, **self.split, overwrite=True)
            done["split"] = str(home(path) / SPLIT_DIR / f"{made.name}.json")
            chosen = f"{made.name}/{made.rule.names[0]}"
        if self.stats:
            compute_stats(path, chosen, overwrite=True)
            done["stats"] = str(stats_path(path, None if chosen is None else chosen.split("/")[0]))
        return done
