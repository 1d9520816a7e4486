"""`neurocodec info` and `neurocodec verify`: a dataset's summary, and every shard re-read."""

from __future__ import annotations

import argparse
from typing import Any

from neurocodec.cli.options import add_storage_arguments, cache_from_args, storage_options_from_args
from neurocodec.dataset.info import ShardedDatasetInfo
from neurocodec.dataset.reader import Dataset


def add_parsers(sub: Any) -> None:
    """Register `info` and `verify` on the `neurocodec` command's subparsers."""
    p = sub.add_parser("info", help="summarise a dataset from its manifest")
    p.add_argument("path", help="dataset directory or URL (s3://, gs://, https://, ...)")
    add_storage_arguments(p, cache=False)
    p.set_defaults(func=run_info)
    p = sub.add_parser("verify", help="re-read every shard and check it against the manifest")
    p.add_argument("path", help="dataset directory or URL (s3://, gs://, https://, ...)")
    add_storage_arguments(p)
    p.set_defaults(func=run_verify)


def run_info(args: argparse.Namespace) -> int:
    """The `info` subcommand."""
    ShardedDatasetInfo(args.path, storage_options=storage_options_from_args(args)).print_summary()
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """The `verify` subcommand."""
    with Dataset(args.path, storage_options=storage_options_from_args(args), cache=cache_from_args(args)) as ds:
        count = ds.verify_all()
        print(f"ok: {count} samples in {len(ds.shards)} shards match {args.path}/dataset_metadata.json")
    return 0
