"""`neurocodec split`: assign a dataset's sessions (or subjects, or stretches of time) to parts
and store the split beside the manifest (see `neurocodec.dataset.splits`)."""

from __future__ import annotations

import argparse
import re
from typing import Any

from neurocodec.cli.options import CommandLineError
from neurocodec.dataset.splits import BY, SPLIT_DIR
from neurocodec.format.home import home

# make_split's argument names as they appear in its messages -> the flags that set them
_FLAGS = (("overwrite=True", "--overwrite"), ("guard_s=", "--guard-s "), ("guard_s ", "--guard-s "),
          ("fractions=", "--fractions "), ("fractions must", "--fractions must"), ("fraction of", "--fractions: fraction of"), ("folds=", "--folds "),
          ("folds ", "--folds "), ("fold ", "--fold "), ("seed ", "--seed "), ("by must", "--by must"),
          ("a split's name", "--name: a split's name"))


def add_parsers(sub: Any) -> None:
    """Register `split` on the `neurocodec` command's subparsers."""
    p = sub.add_parser("split", help="assign sessions, subjects or time to train/valid/test and store it "
                                     "with the dataset (splits/<name>.json)")
    p.add_argument("path", help="local dataset directory")
    p.add_argument("--by", choices=BY, default="session", help="what goes to one part (default: session)")
    p.add_argument("--fractions", metavar="PART=F,...", help="parts and fractions in order "
                   "(default: train=0.8,valid=0.1,test=0.1)")
    p.add_argument("--folds", type=int, help="k-fold: the number of folds (with --fold; parts train and test)")
    p.add_argument("--fold", type=int, help="k-fold: the fold held out as test, 0..folds-1")
    p.add_argument("--seed", type=int, default=0, help="seed of the assignment (default 0)")
    p.add_argument("--guard-s", type=float, help="--by time: seconds left out around every cut (default and "
                   "minimum: the longest window a loader can read)")
    p.add_argument("--name", default="default", help="the split's name (default: default; loaders then take "
                   "split='train', else split='<name>/train')")
    p.add_argument("--overwrite", action="store_true", help="replace a split of that name")
    p.add_argument("--refresh", action="store_true", help="make every stored split again by its own rule for "
                   "the dataset as it is now (after an append): sessions keep their parts, new ones get theirs")
    p.set_defaults(func=run_split)


def run_split(args: argparse.Namespace) -> int:
    """The `split` subcommand: make the split, then print each part's sessions and samples."""
    from neurocodec.dataset.splits import make_split

    if args.refresh:
        return _refresh(args)
    fractions = parse_fractions(args.fractions)
    try:
        split = make_split(args.path, by=args.by, fractions=fractions, seed=args.seed, folds=args.folds,
                           fold=args.fold, guard_s=args.guard_s, name=args.name, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as exc:
        raise CommandLineError(_in_flags(str(exc))) from None
    print(f"split {split.name!r} of {args.path} by {split.rule.by} (seed {split.rule.seed}): "
          f"{home(args.path) / SPLIT_DIR / f'{split.name}.json'}")
    for part in split.rule.names:
        runs = split.samples[part]
        count = int((runs[:, 1] - runs[:, 0]).sum()) if len(runs) else 0
        print(f"  {part}: {len(split.ranges[part])} sessions, {count} stored samples")
    return 0


def _refresh(args: argparse.Namespace) -> int:
    from neurocodec.dataset.splits import refresh_splits

    given = [flag for flag, value in (("--fractions", args.fractions), ("--folds", args.folds), ("--fold", args.fold),
                                      ("--guard-s", args.guard_s), ("--overwrite", args.overwrite)) if value]
    if given:
        raise CommandLineError(f"--refresh re-applies each split's stored rule: drop {' '.join(given)}")
    names = refresh_splits(args.path)
    print(f"refreshed {len(names)} split(s) of {args.path}: {', '.join(names) or '(none stored)'}")
    return 0


def parse_fractions(text: str | None, flag: str = "--fractions") -> dict[str, float] | None:
    """PART=FRACTION,... as make_split's `fractions` (None for None); CommandLineError naming `flag`."""
    if text is None:
        return None
    out = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise CommandLineError(f"{flag} {text}: give PART=FRACTION pairs, e.g. train=0.8,valid=0.1,test=0.1")
    return out


def _in_flags(message: str) -> str:
    for words, flag in _FLAGS:
        message = message.replace(words, flag)
    return re.sub(r"\s+", " ", message)
