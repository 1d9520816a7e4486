"""`neurocodec plugins`: the installed plugins, their versions, modalities and codecs."""

from __future__ import annotations

import argparse
from typing import Any

from neurocodec.plugin.manager import DISABLE_ENV, disabled_from_env, load_registry


def add_parsers(sub: Any) -> None:
    """Register `plugins` on the `neurocodec` command's subparsers."""
    p = sub.add_parser("plugins", help="list installed plugins and what each provides")
    p.set_defaults(func=run_plugins)


def run_plugins(args: argparse.Namespace) -> int:
    """The `plugins` subcommand."""
    registry = load_registry()
    for p in registry.plugins():
        print(f"{p.name:<12} {p.origin}  ({p.module})")
        mods = registry.modality_names(p.name)
        codecs = registry.codec_ids(p.name)
        if mods:
            print(f"    modalities: {', '.join(mods)}")
            for name in mods:
                description = registry.modality(name).description
                if description:
                    print(f"      {name:<12} {description}")
        if codecs:
            print(f"    codecs:     {', '.join(codecs)}")
    disabled = disabled_from_env()
    if disabled:
        print(f"disabled by {DISABLE_ENV}: {', '.join(sorted(disabled))}")
    return 0
