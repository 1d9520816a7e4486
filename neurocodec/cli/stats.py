"""`neurocodec stats`: normalisation statistics of a dataset's training part (or of every
sample), stored beside the manifest (see `neurocodec.dataset.stats_compute`).

    neurocodec stats ./chunks                       # part train of split "default"
    neurocodec stats ./chunks --split cv0/train     # part train of split "cv0"
    neurocodec stats ./arrays --all                 # every sample (stats/all.json)
"""

from __future__ import annotations

import argparse
import re
from typing import Any

import numpy as np

from neurocodec.cli.options import CommandLineError

# compute_stats' words as they appear in its messages -> the flags that say the same
_FLAGS = (("pass overwrite=True", "pass --overwrite"), ("pass split=None", "pass --all"),
          ("(split=None)", "(--all)"), ("split must be", "--split must be"))


def add_parsers(sub: Any) -> None:
    """Register `stats` on the `neurocodec` command's subparsers."""
    p = sub.add_parser("stats", help="compute normalisation statistics (per session and channel) from a split's "
                                     "training part and store them with the dataset (stats/<split>.json)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="local dataset directory")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--split", default="train", metavar="PART | NAME/PART",
                       help="the part the statistics come from: a part of split 'default' (default: train) or "
                            "NAME/PART; loaders with split= scale with those of the split's first part")
    which.add_argument("--all", action="store_true", help="from every sample (stats/all.json: loaders without "
                                                          "split= scale with these)")
    p.add_argument("--overwrite", action="store_true", help="replace the statistics stored for that split")
    p.set_defaults(func=run_stats)


def run_stats(args: argparse.Namespace) -> int:
    """The `stats` subcommand: compute and store the statistics, then print a short summary."""
    from neurocodec.dataset.stats import stats_path
    from neurocodec.dataset.stats_compute import compute_stats
    from neurocodec.errors import DatasetError

    try:
        stats = compute_stats(args.path, None if args.all else args.split, overwrite=args.overwrite)
    except (ValueError, FileExistsError, DatasetError) as exc:
        raise CommandLineError(_in_flags(str(exc))) from None
    source = "every sample" if stats.split is None else f"part {stats.part!r} of split {stats.split!r}"
    print(f"statistics of {args.path} from {source} ({stats.total_samples} samples): "
          f"{stats_path(args.path, stats.split)}")
    for field, entry in stats.fields.items():
        pooled = entry.dataset
        print(f"  {field}: {len(entry.sessions)} session(s), {pooled.channels} value(s) pooled; "
              f"mean {_range(pooled.mean)}, std {_range(pooled.std)}, {int(pooled.count.sum()):,} finite values")
    return 0


def _range(values: np.ndarray) -> str:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return "undefined"
    lo, hi = float(finite.min()), float(finite.max())
    return f"{lo:.4g}" if lo == hi else f"{lo:.4g} to {hi:.4g}"


def _in_flags(message: str) -> str:
    for words, flag in _FLAGS:
        message = message.replace(words, flag)
    return re.sub(r"\s+", " ", message)
