"""`neurocodec info` and `neurocodec verify`: a dataset's summary with its files' sizes checked,
and every shard re-read."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from neurocodec.cli.options import add_storage_arguments, cache_from_args, storage_options_from_args
from neurocodec.dataset.info import ShardedDatasetInfo
from neurocodec.dataset.reader import Dataset, ShardCheck
from neurocodec.errors import DatasetError


def add_parsers(sub: Any) -> None:
    """Register `info` and `verify` on the `neurocodec` command's subparsers."""
    p = sub.add_parser("info", help="summarise a dataset from its manifest and check that every shard file "
                                   "is there with the size it lists (status 1 if not)")
    p.add_argument("path", help="dataset directory or URL (s3://, gs://, https://, ...)")
    add_storage_arguments(p, cache=False)
    p.set_defaults(func=run_info)
    p = sub.add_parser("verify", help="re-read every shard and check it against the manifest (each bad shard "
                                     "on a line of its own, then a summary; status 1 if any is bad)")
    p.add_argument("path", help="dataset directory or URL (s3://, gs://, https://, ...)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (there is one only on a terminal)")
    add_storage_arguments(p)
    p.set_defaults(func=run_verify)


def run_info(args: argparse.Namespace) -> int:
    """The `info` subcommand: the summary, then status 1 with an error line when a shard or index
    file is missing or not of the size the manifest lists."""
    info = ShardedDatasetInfo(args.path, storage_options=storage_options_from_args(args))
    info.print_summary()
    files = info.check_files()
    if not files.ok:
        sys.stdout.flush()
        raise DatasetError(f"{args.path}: {files.describe()}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """The `verify` subcommand: every shard read and checked, each bad one printed as it is found
    (with a progress bar on a terminal), then a summary: "ok: ..." or an error line naming every
    bad shard (status 1)."""
    with Dataset(args.path, storage_options=storage_options_from_args(args), cache=cache_from_args(args)) as ds:
        verify_every_shard(ds, args.path, progress=not args.no_progress)
        print(f"ok: {len(ds)} samples in {len(ds.shards)} shards match the manifest of {args.path}")
    return 0


_NAMED = 20  # bad shards named in the summary line (each has its own line above it)


def verify_every_shard(ds: Dataset, path: str, progress: bool = True) -> None:
    """Check every shard of `ds` (opened from `path`), printing each bad one as it is found (with
    a progress bar if `progress` and stderr is a terminal); DatasetError naming every bad shard
    if any is."""
    bad = _verify(ds, progress=progress and sys.stderr.isatty())
    if not bad:
        return
    samples = sum(check.entry.samples for check in bad)
    names = ", ".join(check.entry.name for check in bad[:_NAMED])
    more = f" and {len(bad) - _NAMED:,} more" if len(bad) > _NAMED else ""
    sys.stdout.flush()
    raise DatasetError(f"{path}: {len(bad):,} of {len(ds.shards):,} shards bad ({samples:,} of "
                       f"{len(ds):,} samples in them): {names}{more}")


def _verify(ds: Dataset, progress: bool) -> list[ShardCheck]:
    """Check every shard, printing each bad one as found; the bad ones."""
    from tqdm import tqdm

    bad = []
    with tqdm(total=sum(s.bytes + s.index_bytes for s in ds.shards), unit="B", unit_scale=True,
              desc="verifying", disable=not progress, file=sys.stderr) as bar:
        for check in ds.verify_shards():
            bar.update(check.entry.bytes + check.entry.index_bytes)
            if not check.ok:
                bad.append(check)
                bar.write(f"bad: {check.error}", file=sys.stdout)
                sys.stdout.flush()
    return bad
