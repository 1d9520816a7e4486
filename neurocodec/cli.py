"""The `neurocodec` command: `convert`, `info`, `verify`, `plugins`."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from neurocodec import __version__
from neurocodec.errors import NeurocodecError


def _info(args: argparse.Namespace) -> int:
    from neurocodec.info import ShardedDatasetInfo
    from neurocodec.storage.cli import storage_options_from_args

    ShardedDatasetInfo(args.path, storage_options=storage_options_from_args(args)).print_summary()
    return 0


def _verify(args: argparse.Namespace) -> int:
    from neurocodec.format.reader import Dataset
    from neurocodec.storage.cli import cache_from_args, storage_options_from_args

    with Dataset(args.path, storage_options=storage_options_from_args(args), cache=cache_from_args(args)) as ds:
        count = ds.verify_all()
        print(f"ok: {count} samples in {len(ds.shards)} shards match {args.path}/dataset_metadata.json")
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from neurocodec.plugins import DISABLE_ENV, disabled_from_env, load_registry

    registry = load_registry()
    for p in registry.plugins():
        print(f"{p.name:<12} {p.origin}  ({p.module})")
        mods = registry.modality_names(p.name)
        codecs = registry.codec_ids(p.name)
        if mods:
            print(f"    modalities: {', '.join(mods)}")
        if codecs:
            print(f"    codecs:     {', '.join(codecs)}")
    disabled = disabled_from_env()
    if disabled:
        print(f"disabled by {DISABLE_ENV}: {', '.join(sorted(disabled))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `neurocodec` command."""
    parser = argparse.ArgumentParser(prog="neurocodec", description=__doc__)
    parser.add_argument("--version", action="version", version=f"neurocodec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    from neurocodec.storage.cli import add_storage_arguments

    p = sub.add_parser("info", help="summarise a dataset from its manifest")
    p.add_argument("path", help="dataset directory or URL (s3://, gs://, https://, ...)")
    add_storage_arguments(p, cache=False)
    p.set_defaults(func=_info)
    p = sub.add_parser("verify", help="re-read every shard and check it against the manifest")
    p.add_argument("path", help="dataset directory or URL (s3://, gs://, https://, ...)")
    add_storage_arguments(p)
    p.set_defaults(func=_verify)
    p = sub.add_parser("plugins", help="list installed plugins and what each provides")
    p.set_defaults(func=_plugins)
    from neurocodec.convert import add_convert_parser

    add_convert_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run one subcommand; errors print one line and exit non-zero."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (NeurocodecError, ValueError, FileNotFoundError) as exc:
        print(f"neurocodec {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"neurocodec {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
