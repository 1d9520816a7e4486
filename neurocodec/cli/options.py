"""What several commands share: the options for datasets at URLs (`--storage-option KEY=VALUE`,
`--storage-options JSON`, `--cache-dir`, `--cache-size`), the check of `--output`, and the error
for an unusable command-line value."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from neurocodec.errors import NeurocodecError
from neurocodec.storage.cache import ShardCache, parse_size
from neurocodec.storage.location import dataset_path, is_url


class CommandLineError(NeurocodecError):
    """A command-line value is unusable (the message names the flag)."""


def check_output_arg(args: argparse.Namespace) -> None:
    """A local `--output` must be a directory or not exist yet, under a directory (checked here so
    the error names the flag instead of a failing mkdir)."""
    output = getattr(args, "output", None)
    if not isinstance(output, str) or not output or (is_url(output) and not output.lower().startswith("file:")):
        return
    path = Path(dataset_path(output))
    for place in (path, *path.parents):
        if os.path.lexists(place):
            if not place.is_dir():
                what = ("exists and is not a directory" if place == path
                        else f"is below {place}, which is not a directory")
                raise CommandLineError(f"--output {output} {what}: give a directory for the dataset "
                                       "(new, empty, or holding a dataset to --overwrite)")
            return


def _value(text: str) -> Any:
    """A JSON value if `text` parses as one (numbers, true/false, objects), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def add_storage_arguments(parser: argparse.ArgumentParser, *, cache: bool = True) -> None:
    """Add the storage options (and, with `cache`, the shard cache options) to `parser`."""
    group = parser.add_argument_group("storage (for s3://, gs://, https://, ... URLs)")
    group.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                       help="fsspec storage option, repeatable; VALUE is parsed as JSON when it is "
                            "JSON (e.g. endpoint_url=http://127.0.0.1:9000 anon=true)")
    group.add_argument("--storage-options", metavar="JSON", default=None,
                       help='fsspec storage options as one JSON object (e.g. \'{"profile": "lab"}\')')
    if cache:
        group.add_argument("--cache-dir", default=None,
                           help="local shard cache directory (default $NEUROCODEC_CACHE_DIR or "
                                "~/.cache/neurocodec/shards)")
        group.add_argument("--cache-size", default=None,
                           help="shard cache size limit, e.g. 20G (default $NEUROCODEC_CACHE_SIZE or 10G)")


def storage_options_from_args(args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    """The storage options given on the command line (`--{prefix}storage-option(s)`, e.g. the
    prefix "input-"); ValueError naming the flag for malformed ones."""
    options: dict[str, Any] = {}
    attribute, flag = prefix.replace("-", "_"), f"--{prefix}storage-option"
    if getattr(args, f"{attribute}storage_options", None):
        try:
            doc = json.loads(getattr(args, f"{attribute}storage_options"))
        except ValueError as exc:
            raise ValueError(f"{flag}s is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ValueError(f"{flag}s must be a JSON object")
        options.update(doc)
    for pair in getattr(args, f"{attribute}storage_option", None) or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} takes KEY=VALUE, got {pair!r}")
        options[key] = _value(value)
    return options


def cache_from_args(args: argparse.Namespace) -> ShardCache | None:
    """A `ShardCache` from `--cache-dir` / `--cache-size`, or None for the default one;
    ValueError naming the flag for unusable values."""
    cache_dir, size = getattr(args, "cache_dir", None), getattr(args, "cache_size", None)
    if cache_dir is None and size is None:
        return None
    if cache_dir is not None and os.path.lexists(cache_dir) and not os.path.isdir(cache_dir):
        raise ValueError(f"--cache-dir {cache_dir} is an existing file, not a directory")
    try:
        size = parse_size(size) if size is not None else None
    except ValueError as exc:
        raise ValueError(f"--cache-size: {exc}") from None
    return ShardCache(cache_dir, size)
